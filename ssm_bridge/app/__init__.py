"""The interactive front-ends: the demo's page (`ui`, Gradio; launched by the top-level
app.py), its analysis layer (`support`, testable without a server) and the setup every
notebook in notebooks/ calls first (`notebook`)."""

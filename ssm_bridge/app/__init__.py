"""The interactive front-ends: the demo's page (`ui`, Gradio; launched by the top-level
app.py) and its analysis layer (`support`, testable without a server)."""

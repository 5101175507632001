"""The captioning demo's analysis layer, used by the top-level app.py (the Gradio UI)."""

"""ssm-bridge's demo: caption an image, then look inside the model word by word.

    python app.py [--checkpoint shapes-tiny] [--host 127.0.0.1] [--port 7860] [--device cpu]
                  [--max-upload-mb 10] [--concurrency 2] [--seed N] [--share]

The same as `ssm-bridge app [flags]` from an installed package (ssm_bridge.app.serve reads
the command line; ssm_bridge.app.ui builds the page, one builder per part; ssm_bridge.app.support
does the analysis behind it). Fully offline: no analytics, no CDN (fonts and scripts come
with the gradio package), no share link unless --share. Only gradio's own upload cache is
served (no allowed_paths).

API, for gradio_client (the same checks as the UI: a bad file raises AppError with the
app's message):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict(handle_file("scene.png"), api_name="/caption")    # -> 'a small red circle'
    # /caption(image: file, decoding: "greedy" | "sampling" = "greedy",
    #          temperature: float = 1.0, top_k: int = 0 (off), top_p: float = 1.0 (off),
    #          max_length: int = 32, seed: int = 0) -> str
"""

from __future__ import annotations

import sys

from ssm_bridge.app.serve import launch, main, parse_args

__all__ = ["launch", "main", "parse_args"]  # and build_app, guarded (see __getattr__)


def __getattr__(name: str):
    """build_app and guarded come from the page module, loaded (with torch and gradio) on
    first use, so that `python app.py --help` answers at once."""
    if name in ("build_app", "guarded"):
        from ssm_bridge.app import ui

        return getattr(ui, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())

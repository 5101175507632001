"""Shared by the app tests: the repository's app.py module and a launched app."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(max_upload_mb: float | None = None, **build_kwargs):
    """Build and launch the app on a free loopback port; yield its URL; close it."""
    upload = {} if max_upload_mb is None else {"max_upload_mb": max_upload_mb}
    demo = app.build_app(**upload, **build_kwargs)
    _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True,
                           **upload)
    try:
        yield url
    finally:
        demo.close()


ALL_SSM = "shapes-all-ssm"  # the attention-free shipped checkpoint
DECODING = ("greedy", 1.0, 0, 1.0, 16, 0)  # the decoding controls' values: greedy, 16 tokens


def page_handlers(first: str = "shapes-tiny", fit_ood: bool = True):
    """The app's Handlers on `first` with the shipped checkpoints to choose from, without
    a page or a server (each handler is called as gradio would)."""
    from ssm_bridge import load_pretrained
    from ssm_bridge.app.support import DEFAULT_MAX_PIXELS, Analyser
    from ssm_bridge.app.ui import Handlers, Models, model_choices

    analyser = Analyser(load_pretrained(first), fit_ood=fit_ood)
    models = Models(analyser, first, model_choices(first), "cpu")
    return Handlers(models, 10.0, 1, 0, DEFAULT_MAX_PIXELS)

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

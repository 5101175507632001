"""ssm-bridge's demo: caption an image, then look inside the model word by word.

    python app.py [--checkpoint shapes-tiny] [--host 127.0.0.1] [--port 7860] [--device cpu]
                  [--max-upload-mb 10] [--concurrency 2] [--share]

Fully offline: no analytics, no CDN (fonts and scripts come with the gradio package), no
share link unless --share. Only gradio's own upload cache is served (no allowed_paths).
This file reads the command line and serves the page; ssm_bridge.app.ui builds the page
(one builder per part) and ssm_bridge.app.support does the analysis behind it.

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

import argparse
import sys

from ssm_bridge.app.support import DEFAULT_MAX_UPLOAD_MB, MB
from ssm_bridge.app.ui import build_app, guarded
from ssm_bridge.cli import Parser, float_in, int_at_least
from ssm_bridge.core.scan import prepare_extension
from ssm_bridge.training.checkpoint import CheckpointError

__all__ = ["build_app", "guarded", "launch", "main", "parse_args"]
HARD_LIMIT_FACTOR = 4  # gradio itself refuses uploads over this many times --max-upload-mb
MAX_SESSIONS = 256  # sessions whose state (~1 MB each) the server keeps, least recent dropped


def launch(demo, host: str = "127.0.0.1", port: int | None = 7860,
           share: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **kwargs):
    """Start the server: local only unless `share`, uploads over HARD_LIMIT_FACTOR x the
    app's limit refused by gradio before they reach the app. Returns launch()'s result."""
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True,
                       max_file_size=int(max_upload_mb * HARD_LIMIT_FACTOR * MB),
                       ssr_mode=False, pwa=False, mcp_server=False, footer_links=["api"],
                       state_session_capacity=MAX_SESSIONS, run_history=False, **kwargs)


def device_arg(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N or mps, and present on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"must be cpu, cuda, cuda:N or mps, got {text!r}") from None
    present = {"cpu": lambda: True,
               "cuda": lambda: torch.cuda.is_available()
               and (dev.index or 0) < torch.cuda.device_count(),
               "mps": lambda: torch.backends.mps.is_available()}
    if dev.type not in present:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    if not present[dev.type]():
        raise argparse.ArgumentTypeError(f"{text} is not available on this machine; use cpu")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = Parser(prog="app.py", description="ssm-bridge captioning demo (Gradio)")
    ap.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    ap.add_argument("--port", type=int_at_least(1), default=7860, help="1 to 65535")
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda[:N] or mps")
    ap.add_argument("--max-upload-mb", type=float_in(0, lo_open=True),
                    default=DEFAULT_MAX_UPLOAD_MB)
    ap.add_argument("--concurrency", type=int_at_least(1), default=2,
                    help="events run in parallel")
    ap.add_argument("--seed", type=int_at_least(0), default=None,
                    help="seed of the random-scene button")
    ap.add_argument("--share", action="store_true", help="public gradio.live link (online)")
    args = ap.parse_args(argv)
    if args.port > 65535:
        ap.error(f"argument --port: must be an integer in [1, 65535], got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        demo = build_app(args.checkpoint, args.device, args.max_upload_mb, args.concurrency,
                         seed=args.seed)
    except CheckpointError as e:  # one line, not a traceback
        print(f"app.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    prepare_extension()  # before the server says it is running: no 1-minute first caption
    launch(demo, args.host, args.port, args.share, args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

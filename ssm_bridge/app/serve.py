"""Start the captioning demo: `python app.py [flags]` in a checkout, `ssm-bridge app
[flags]` where the package is installed.

    --checkpoint shapes-tiny   shipped name or checkpoint folder (the selector offers the
                               shipped ones too)
    --host 127.0.0.1 --port 7860 --device cpu --max-upload-mb 10 --concurrency 2
    --seed N --share

The command line is read and checked before torch and gradio load, so `--help` and a bad
flag answer at once, and each bad setting is one line naming it (exit status 2): a port
outside 1..65535 or already in use, a host that is no address of this machine, a device
this machine lacks, a checkpoint that does not exist. Then the checkpoint loads, the C++
scan kernel is built or loaded (so the first caption does not wait for it), and the server
starts.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from ..cli import Parser, float_in, int_at_least

MAX_SESSIONS = 256  # sessions whose state the server keeps, least recent dropped
# gradio's worker threads (its default is 40): 40 for the page's events plus 32 for /caption
# requests, which each wait in a thread for their batch (batching.API_CONCURRENCY)
MAX_THREADS = 40 + 32
DEFAULT_MAX_UPLOAD_MB = 10.0
MB = 2**20


def device_arg(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N or mps, and present on this machine (torch is
    imported only to check a device other than cpu)."""
    if text == "cpu":
        return text
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


def bind_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on (host, port), in words naming the flag to
    change, or None when it can (a trial bind, released at once)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"argument --host: {host!r} is not an IP address or a known host name"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"argument --port: port {port} on {host} is already in use; "
                        "choose another with --port")
            if e.errno == errno.EADDRNOTAVAIL:
                return (f"argument --host: {host} is not an address of this machine; use "
                        "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
            if e.errno == errno.EACCES:
                return (f"argument --port: port {port} needs administrator rights; choose "
                        "one above 1023 with --port")
            return f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port"
    return None


def parse_args(argv: list[str] | None = None, prog: str = "app.py") -> argparse.Namespace:
    ap = Parser(prog=prog, description="ssm-bridge captioning demo (Gradio)")
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
    problem = bind_problem(args.host, args.port)
    if problem:
        ap.error(problem)
    return args


def launch(demo, host: str = "127.0.0.1", port: int | None = 7860,
           share: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **kwargs):
    """Start the server: local only unless `share`. Gradio refuses an upload over
    `max_upload_mb` before it reaches the app, in the browser (naming the file and the
    limit) and at its upload route (413): one limit, the one the upload box states.
    Returns launch()'s result."""
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True,
                       max_file_size=int(max_upload_mb * MB),
                       ssr_mode=False, pwa=False, mcp_server=False, footer_links=["api"],
                       state_session_capacity=MAX_SESSIONS, run_history=False,
                       max_threads=MAX_THREADS, **kwargs)


def main(argv: list[str] | None = None, prog: str = "app.py") -> int:
    args = parse_args(argv, prog)
    from ..core.scan import prepare_extension
    from ..training.checkpoint import CheckpointError
    from .ui import build_app

    try:
        demo = build_app(args.checkpoint, args.device, args.max_upload_mb, args.concurrency,
                         seed=args.seed)
    except CheckpointError as e:  # one line, not a traceback
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    prepare_extension()  # before the server says it is running: no 1-minute first caption
    launch(demo, args.host, args.port, args.share, args.max_upload_mb)
    return 0

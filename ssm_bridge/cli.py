"""The `ssm-bridge` command.

    ssm-bridge train [--preset=NAME] [--resume] [--key=value ...]
    ssm-bridge eval --checkpoint NAME_OR_DIR --split test --num N [--json PATH]
    ssm-bridge caption IMAGE... [--checkpoint NAME_OR_DIR] [--names]
    ssm-bridge interpret --checkpoint NAME_OR_DIR --num N [--maps KINDS] [--json PATH]
    ssm-bridge faithfulness --checkpoint NAME_OR_DIR --num N [--maps KINDS] [--json PATH]
    ssm-bridge trace --checkpoint NAME_OR_DIR --attribute colour --num N [--plot PNG]
    ssm-bridge sanity --checkpoint NAME_OR_DIR --num N [--shuffled DIR] [--plot PNG]
    ssm-bridge report IMAGE | --scene SPLIT:INDEX --out REPORT.html [--checkpoint NAME_OR_DIR]
                      [--maps KINDS] [--seed N] [--max-length N]
    ssm-bridge app [--checkpoint NAME_OR_DIR] [--host H] [--port P] [--device D] ...
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit status 2), no usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(lo: int):
    """argparse type: an integer >= lo; the message names the allowed range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return value
    return parse


def float_in(lo: float, hi: float = math.inf, lo_open: bool = False):
    """argparse type: a finite number in [lo, hi] ((lo, hi] with lo_open)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi < math.inf else \
                f"{'> ' if lo_open else '>= '}{lo:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}")
        return value
    return parse


def writable_file(text: str) -> Path:
    """argparse type: a file path that can be written now, so that an output path that
    cannot be is reported before the work, not after it."""
    path = Path(text)
    parent = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return path


def load_or_exit(parser: argparse.ArgumentParser, checkpoint: str, **kwargs):
    """load_pretrained(checkpoint), or one line on stderr and exit status 2 when the
    checkpoint is missing, damaged or inconsistent (checkpoint.CheckpointError)."""
    from .training.checkpoint import CheckpointError
    from .training.pretrained import load_pretrained

    try:
        return load_pretrained(checkpoint, **kwargs)
    except CheckpointError as e:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(e).split())}\n")


def caption_main(argv: list[str]) -> int:
    """One caption per readable image on stdout; unreadable files are reported on stderr
    and skipped. Exit status 1 if any file failed, 2 for a bad argument or checkpoint."""
    from .data import open_image

    p = Parser(prog="ssm-bridge caption", description=caption_main.__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--names", action="store_true", help="prefix each caption with its file")
    p.add_argument("--temperature", type=float_in(0.0), default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    args = p.parse_args(argv)
    bundle = load_or_exit(p, args.checkpoint)
    failed = 0
    for path in args.images:
        try:
            image = open_image(path)
            (text,) = bundle.caption([image], temperature=args.temperature, seed=args.seed)
        except (OSError, ValueError) as e:
            print(f"ssm-bridge caption: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {text}" if args.names else text, flush=True)
    return 1 if failed else 0


# Each subcommand's module (imported only when it runs, so `--help` loads no torch); its
# main(argv) parses the rest of the command line. `caption` lives here.
SUBCOMMANDS = {
    "train": ".training.train", "eval": ".training.evaluate", "caption": None,
    "interpret": ".interp.interpret", "faithfulness": ".interp.faithfulness_study",
    "trace": ".interp.tracing", "sanity": ".interp.sanity", "report": ".interp.report",
    "app": ".app.serve",
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help")
              else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "caption":
        return caption_main(rest)
    module = importlib.import_module(SUBCOMMANDS[cmd], __package__)
    if cmd == "app":
        return module.main(rest, prog="ssm-bridge app")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())

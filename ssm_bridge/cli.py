"""The `ssm-bridge` command.

    ssm-bridge train [--preset=NAME] [--resume] [--key=value ...]
    ssm-bridge eval --checkpoint NAME_OR_DIR --split test --num N [--json PATH]
    ssm-bridge caption IMAGE... [--checkpoint NAME_OR_DIR] [--names]
    ssm-bridge interpret --checkpoint NAME_OR_DIR --num N [--maps KINDS] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys


def caption_main(argv: list[str]) -> int:
    """One caption per readable image on stdout; unreadable files are reported on stderr
    and skipped. Exit status 1 if any file failed."""
    from .data import open_image
    from .pretrained import load_pretrained

    p = argparse.ArgumentParser(prog="ssm-bridge caption", description=caption_main.__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--names", action="store_true", help="prefix each caption with its file")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bundle = load_pretrained(args.checkpoint)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("train", "eval", "caption", "interpret")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help")
              else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "caption":
        return caption_main(rest)
    if cmd == "interpret":
        from .interpret import main as interpret_main

        return interpret_main(rest)
    if cmd == "train":
        from .train import main as train_main

        return train_main(rest)
    from .evaluate import main as eval_main

    return eval_main(rest)


if __name__ == "__main__":
    sys.exit(main())

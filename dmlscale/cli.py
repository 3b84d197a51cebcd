"""The one command-line entry point: `dmlscale <command> ...`."""

from __future__ import annotations

import argparse
import sys

from dmlscale import demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmlscale", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser("demo", help="train a small embedder on real digits with a dmlscale loss"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            demo.main_from_args(args)
    except ValueError as error:
        print(f"dmlscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

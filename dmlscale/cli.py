"""The one command-line entry point: `dmlscale <command> ...`.

Each command lives in its own module, imported only when that command runs (so `dmlscale shards`
never pays for DeepSpeed). A command module provides `add_arguments(parser)` and
`main_from_args(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dmlscale.demo_cli", "train a small embedder on real digits with a dmlscale loss"),
    "train": ("dmlscale.train.train_cli", "train from a YAML recipe (default: the CPU quickstart on digits)"),
    "eval": ("dmlscale.train.eval_cli", "score a checkpoint or exported weights on evaluation shards"),
    "export": ("dmlscale.train.export_cli", "write a run's checkpoint as plain model weights"),
    "shards": ("dmlscale.data.shards_cli", "write WebDataset tar shards (real digits, an image folder, a CSV/JSONL table)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with every command listed; only `command`'s module is imported for its arguments."""
    parser = argparse.ArgumentParser(prog="dmlscale", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def _say_config_warnings(command: str) -> None:
    """dmlscale's config warnings as one `dmlscale <command>: warning: ...` line each; others as Python shows them.
    Call inside `warnings.catch_warnings()`, which puts the previous display back when the command ends."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__name__ == "ConfigWarning" and category.__module__.startswith("dmlscale."):
            print(f"dmlscale {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    with warnings.catch_warnings():
        _say_config_warnings(args.command)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The chosen command's exit code: its errors as one `dmlscale <command>: error:` line."""
    try:
        result = importlib.import_module(COMMANDS[args.command][0]).main_from_args(args)
    except ValueError as error:
        print(f"dmlscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not type(error).__module__.startswith("dmlscale."):
            raise
        # a failure dmlscale can explain (bad data, a full disk, non-finite steps, a failed rank): no traceback
        print(f"dmlscale {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if isinstance(result, dict) and result.get("stopped"):
        from dmlscale.train.train_cli import EXIT_STOPPED

        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())

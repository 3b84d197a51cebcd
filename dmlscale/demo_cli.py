"""`dmlscale demo [--loss NAME] [--miner NAME] [--steps N] [--seed S] [--threads T]`: its arguments, without
importing torch, so `--help` answers at once; the training itself is in dmlscale/demo.py.
The names it offers are in demo_choices.py."""

from __future__ import annotations

import argparse

from dmlscale.demo_choices import DEMO_LOSSES, DEMO_MINERS, check_choice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", default="TripletMarginLoss", metavar="NAME",
                        help=f"a loss of dmlscale.losses, one of: {', '.join(DEMO_LOSSES)} (default: %(default)s)")
    parser.add_argument("--miner", default=None, metavar="NAME",
                        help=f"a miner of dmlscale.miners (optional), one of: {', '.join(DEMO_MINERS)}")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the demo's small matrices gain nothing from more, and more "
                             "threads than free cores slow them down many times)")


def main_from_args(args: argparse.Namespace) -> dict:
    check_choice("--loss", args.loss, DEMO_LOSSES)
    check_choice("--miner", args.miner, DEMO_MINERS)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    from dmlscale.demo import run

    torch.set_num_threads(args.threads)
    return run(args.loss, args.miner, args.steps, args.seed, max(1, args.print_every))

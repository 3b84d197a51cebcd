"""Streamed vs materialised batch-hard triplet loss and MultiSimilarityLoss, forward+backward, fp32 CPU.

Run:  .venv/bin/python benchmarks/mining_memory.py [--sizes 4096 16384] [--dim 512] [--repeats 1] [--threads N]

"batch-hard" is BatchHardTripletLoss (BatchHardMiner semantics + TripletMarginLoss, AvgNonZero),
"multisim" is MultiSimilarityLoss (cosine, MeanReducer); labels are P x K batches (K = 4 samples per
class). Each cell runs in a fresh subprocess (benchmarks/peak_memory.py): peak extra RSS of the step
and the fastest time of --repeats. The materialised path holds B x B matrices (distances, masks,
their gradients); a cell whose estimate (bytes per matrix element measured at the smallest size,
times B^2) exceeds half the available memory is reported as skipped with that estimate.
`--threads` sets torch's intra-op threads in the children; on a shared, oversubscribed machine use 1:
the streamed path runs many tile-sized operations and each multi-threaded one then waits on its
descheduled threads, which measures the machine, not the method.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import available_bytes, fmt_mib, measure_step, report, run_child  # noqa: E402

TILE = 1024
SAMPLES_PER_CLASS = 4
LOSSES = ["batch-hard", "multisim"]
PATHS = ["materialised", "streamed"]


def child(loss_name: str, path: str, n: int, dim: int, repeats: int, threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from dmlscale.losses import BatchHardTripletLoss, MultiSimilarityLoss

    make = {"batch-hard": BatchHardTripletLoss, "multisim": MultiSimilarityLoss}[loss_name]
    loss_fn = make(tiled=path == "streamed", tile_size=TILE)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(n, dim, generator=gen).requires_grad_(True)
    labels = torch.arange(n) // SAMPLES_PER_CLASS
    warm = emb[:64].detach().clone().requires_grad_(True)
    loss_fn(warm, labels[:64]).backward()  # first-call allocations are not the step's

    def step():
        emb.grad = None
        loss_fn(emb, labels).backward()

    report(measure_step(step, repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        loss_name, path = args.child
        if loss_name not in LOSSES or path not in PATHS:
            raise ValueError(f"--child takes a loss in {LOSSES} and a path in {PATHS}, got {args.child}")
        child(loss_name, path, args.sizes[0], args.dim, args.repeats, args.threads)
        return
    import torch

    threads = args.threads if args.threads > 0 else torch.get_num_threads()
    print(f"forward+backward, D={args.dim}, fp32, CPU ({threads} threads), tile {TILE}, "
          f"{SAMPLES_PER_CLASS} samples per class; peak extra RSS and fastest of {args.repeats} run(s)")
    print(f"{'B':>6} | {'loss':>10} | {'path':>12} | {'extra memory':>13} | {'time':>8} | streamed vs materialised")
    bytes_per_element = {}
    for n in sorted(args.sizes):
        for loss_name in LOSSES:
            cells = {}
            for path in PATHS:
                need = bytes_per_element.get(loss_name, 0) * n * n if path == "materialised" else 0
                if need > available_bytes() / 2:
                    cells[path] = {"skipped": need}
                    continue
                cells[path] = run_child(__file__, [loss_name, path, "--sizes", str(n), "--dim",
                                                   str(args.dim), "--repeats", str(args.repeats),
                                                   "--threads", str(args.threads)])
                if path == "materialised" and "extra_bytes" in cells[path] and loss_name not in bytes_per_element:
                    bytes_per_element[loss_name] = cells[path]["extra_bytes"] / n**2
            plain = cells["materialised"]
            for path, cell in cells.items():
                if "skipped" in cell:
                    print(f"{n:>6} | {loss_name:>10} | {path:>12} | skipped: needs ~{cell['skipped'] / 1024**3:,.1f} GiB")
                    continue
                if "error" in cell:
                    print(f"{n:>6} | {loss_name:>10} | {path:>12} | {cell['error']}")
                    continue
                ratio = ""
                if path == "streamed" and "seconds" in plain:
                    ratio = (f"{plain['extra_bytes'] / max(cell['extra_bytes'], 1):.1f}x less memory, "
                             f"{cell['seconds'] / plain['seconds']:.2f}x the time")
                print(f"{n:>6} | {loss_name:>10} | {path:>12} | {fmt_mib(cell['extra_bytes']):>13} | "
                      f"{cell['seconds']:>7.2f}s | {ratio}")


if __name__ == "__main__":
    main()

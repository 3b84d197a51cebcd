"""Peak extra memory and wall time of NTXentLoss forward+backward: dmlscale vs pytorch-metric-learning.

Run:  .venv/bin/python benchmarks/ntxent_memory.py [--sizes 256 1024 8192] [--dim 128] [--repeats 3]

Embeddings are B x D float32 on the CPU with SimCLR labels (two views per instance: labels
0..B/2-1 twice). Each measurement runs in a fresh subprocess: it builds the inputs, warms up on a
tiny batch, reads resource.getrusage(RUSAGE_SELF).ru_maxrss, runs forward+backward once and reads it
again; the difference is the peak extra resident memory of that call. The time is the fastest of
`--repeats` runs. PML forms P x N positive-by-negative tensors (P = B positive pairs, N = B(B-2)
negative pairs), so it runs only where the estimate of those fits in a quarter of the free memory.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import available_bytes, measure_step, report, run_child  # noqa: E402

BYTES_PER_GB = 1024**3
# PML's peak is about this many bytes per element of its P x N tensors (a bool mask plus a few
# float32 copies alive at once in forward and backward); measured at B = 256 and 512 with this script
PML_BYTES_PER_PN_ELEMENT = 17


def pml_estimate_bytes(batch_size: int) -> int:
    num_pos, num_neg = batch_size, batch_size * (batch_size - 2)
    return num_pos * num_neg * PML_BYTES_PER_PN_ELEMENT


def child(impl: str, batch_size: int, dim: int, repeats: int) -> None:
    """Runs in the subprocess: prints one JSON line with peak extra memory (bytes) and time (s)."""
    import torch

    if impl == "dmlscale":
        from dmlscale.losses import NTXentLoss
    else:
        from pytorch_metric_learning.losses import NTXentLoss
    loss_fn = NTXentLoss(temperature=0.07)
    gen = torch.Generator().manual_seed(0)
    emb_BD = torch.randn(batch_size, dim, generator=gen, requires_grad=True)
    labels_B = torch.arange(batch_size // 2).repeat(2)
    warm_BD = torch.randn(8, dim, requires_grad=True)
    loss_fn(warm_BD, torch.arange(4).repeat(2)).backward()

    def step() -> None:
        emb_BD.grad = None
        loss_fn(emb_BD, labels_B).backward()

    report(measure_step(step, repeats))


def measure(impl: str, batch_size: int, dim: int, repeats: int) -> dict:
    return run_child(__file__, [impl, "--sizes", str(batch_size), "--dim", str(dim), "--repeats", str(repeats)])


def fmt_gb(num_bytes: float) -> str:
    return f"{num_bytes / BYTES_PER_GB:.3f} GB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["dmlscale", "pml"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size < 4 or size % 2:
            raise ValueError(f"--sizes must be even numbers >= 4 (two views per instance), got {size}")
    if args.child:
        child(args.child, args.sizes[0], args.dim, args.repeats)
        return

    import torch

    print(f"NTXentLoss forward+backward, D={args.dim} float32, CPU ({torch.get_num_threads()} threads), "
          f"SimCLR labels; memory = peak extra RSS (ru_maxrss delta), time = best of {args.repeats}")
    header = (f"{'B':>6} | {'dmlscale mem':>13} {'time':>9} | {'PML mem':>13} {'time':>9} | "
              f"{'mem ratio':>9} {'time ratio':>10}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        ours = measure("dmlscale", size, args.dim, args.repeats)
        ours_cols = (f"{'error':>13} {'':>9}" if "error" in ours
                     else f"{fmt_gb(ours['extra_bytes']):>13} {ours['seconds']:>8.3f}s")
        need = pml_estimate_bytes(size)
        if need > available_bytes() / 4:
            print(f"{size:>6} | {ours_cols} | skipped (needs ~{need / BYTES_PER_GB:,.0f} GB)")
            continue
        pml = measure("pml", size, args.dim, args.repeats)
        if "error" in ours or "error" in pml:
            print(f"{size:>6} | {ours_cols} | {ours.get('error', '')} {pml.get('error', '')}")
            continue
        mem_ratio = pml["extra_bytes"] / max(ours["extra_bytes"], 1)
        time_ratio = pml["seconds"] / ours["seconds"]
        print(f"{size:>6} | {ours_cols} | {fmt_gb(pml['extra_bytes']):>13} {pml['seconds']:>8.3f}s | "
              f"{mem_ratio:>8.1f}x {time_ratio:>9.1f}x")


if __name__ == "__main__":
    main()

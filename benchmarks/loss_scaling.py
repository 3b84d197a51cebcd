"""CLIP loss forward+backward at large batch: dmlscale's tiled ClipLoss vs open_clip's ClipLoss and the
bare matrix-product floor; SupCon on the same 2N embeddings: dmlscale's streamed SupConLoss vs PML's
SupConLoss where it fits. CPU, fp32.

Run:  .venv/bin/python benchmarks/loss_scaling.py [--sizes 2048 4096 16384 65536] [--dim 512] [--repeats 3]
      [--supcon-max 4096]

Each cell runs in a fresh subprocess (peak extra RSS of the first step, median time of --repeats). The
floor is the three matrix products of a forward+backward (img txt^T, G txt, G^T img) done tile by
tile, i.e. the FLOPs every exact method must spend (6 N^2 D), with no exp, softmax or bookkeeping.
open_clip and PML need their N x N (PML: 2N x 2N) matrices; a cell whose estimate exceeds half the
available memory is reported as skipped with that estimate. The SupCon rows (labels: pair i's image
and text share label i, temperature 1/14) run at N <= --supcon-max only.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import available_bytes, fmt_mib, measure_step, report, run_child  # noqa: E402

TILE = 1024
# bytes per element of the N x N logits alive at the peak (measured at N = 4096 with this script)
ESTIMATE_BYTES_PER_ELEMENT = {"open_clip": 16, "pml_supcon": 185}
CLIP_IMPLS = ["floor", "dmlscale", "open_clip"]
SUPCON_IMPLS = ["dmlscale_supcon", "pml_supcon"]


def estimate_bytes(impl: str, n: int) -> int:
    if impl == "open_clip":
        return ESTIMATE_BYTES_PER_ELEMENT[impl] * n * n
    if impl == "pml_supcon":
        return ESTIMATE_BYTES_PER_ELEMENT[impl] * (2 * n) ** 2
    return 0


def child(impl: str, n: int, dim: int, repeats: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1).requires_grad_(True)
    txt = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1).requires_grad_(True)
    scale = torch.tensor([14.0], requires_grad=True)
    if impl == "dmlscale":
        from dmlscale.losses import ClipLoss

        loss_fn = ClipLoss(tiled=True, tile_size=TILE)
        run = lambda: loss_fn(img, txt, scale).backward()  # noqa: E731
    elif impl == "open_clip":
        from open_clip.loss import ClipLoss

        loss_fn = ClipLoss()
        run = lambda: loss_fn(img, txt, scale).backward()  # noqa: E731
    elif impl in SUPCON_IMPLS:
        if impl == "pml_supcon":
            from pytorch_metric_learning.losses import SupConLoss

            loss_fn = SupConLoss(temperature=1 / 14.0)
        else:
            from dmlscale.losses import SupConLoss

            loss_fn = SupConLoss(temperature=1 / 14.0, tiled=True, tile_size=TILE)
        labels = torch.arange(n).repeat(2)
        run = lambda: loss_fn(torch.cat([img, txt]), labels).backward()  # noqa: E731
    else:
        def run():
            with torch.no_grad():
                for r0 in range(0, n, TILE):
                    for c0 in range(0, n, TILE):
                        tile = img[r0:r0 + TILE] @ txt[c0:c0 + TILE].t()
                        tile @ txt[c0:c0 + TILE]
                        tile.t() @ img[r0:r0 + TILE]

    small = [t[:64].detach().clone().requires_grad_(True) for t in (img, txt)]
    if impl in ("dmlscale", "open_clip"):
        loss_fn(*small, scale).backward()  # warm-up: first-call allocations are not the step's
    elif impl in SUPCON_IMPLS:
        loss_fn(torch.cat(small), torch.arange(64).repeat(2)).backward()
    report(measure_step(run, repeats))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def run_cells(impls: list[str], n: int, args) -> dict:
    rows = {}
    for impl in impls:
        need = estimate_bytes(impl, n)
        if need > available_bytes() / 2:
            rows[impl] = {"skipped": need}
            continue
        rows[impl] = run_child(__file__, [impl, "--sizes", str(n), "--dim", str(args.dim),
                                          "--repeats", str(args.repeats)])
        if "all_seconds" in rows[impl]:
            rows[impl]["seconds"] = median(rows[impl]["all_seconds"])
    return rows


def print_cell_prefix(n: int, impl: str, cell: dict) -> bool:
    """Print a skipped or failed cell and return False; True when the cell has figures."""
    if "skipped" in cell:
        print(f"{n:>6} | {impl:>15} | skipped: needs ~{cell['skipped'] / 1024**3:,.1f} GiB")
        return False
    if "error" in cell:
        print(f"{n:>6} | {impl:>15} | {cell['error']}")
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--supcon-max", type=int, default=4096, help="largest N of the SupCon rows")
    parser.add_argument("--child", choices=CLIP_IMPLS + SUPCON_IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.sizes[0], args.dim, args.repeats)
        return
    import torch

    print(f"CLIP loss forward+backward, D={args.dim}, fp32, CPU ({torch.get_num_threads()} threads); "
          f"peak extra RSS and median of {args.repeats} run(s); floor = 3 tiled matrix products (6 N^2 D FLOPs)")
    print(f"{'N':>6} | {'impl':>15} | {'extra memory':>13} | {'time':>8} | {'GFLOP/s':>8} | vs open_clip (mem, time) | vs floor (time)")
    for n in args.sizes:
        rows = run_cells(CLIP_IMPLS, n, args)
        for impl, cell in rows.items():
            if not print_cell_prefix(n, impl, cell):
                continue
            gflops = 6 * n * n * args.dim / cell["seconds"] / 1e9
            ref, floor = rows.get("open_clip", {}), rows.get("floor", {})
            vs_ref = (f"{ref['extra_bytes'] / max(cell['extra_bytes'], 1):>7.1f}x less, {ref['seconds'] / cell['seconds']:.2f}x faster"
                      if "seconds" in ref and impl not in ("open_clip", "floor") else "")
            vs_floor = f"{cell['seconds'] / floor['seconds']:.2f}x" if "seconds" in floor else ""
            print(f"{n:>6} | {impl:>15} | {fmt_mib(cell['extra_bytes']):>13} | {cell['seconds']:>7.2f}s | "
                  f"{gflops:>8.1f} | {vs_ref:<23} | {vs_floor}")
    supcon_sizes = [n for n in args.sizes if n <= args.supcon_max]
    if not supcon_sizes:
        return
    print(f"\nSupCon forward+backward on 2N embeddings (image and text of pair i labelled i), D={args.dim}, fp32")
    print(f"{'N':>6} | {'impl':>15} | {'extra memory':>13} | {'time':>8} | vs PML SupCon (mem, time)")
    for n in supcon_sizes:
        rows = run_cells(SUPCON_IMPLS, n, args)
        for impl, cell in rows.items():
            if not print_cell_prefix(n, impl, cell):
                continue
            ref = rows.get("pml_supcon", {})
            vs_ref = (f"{ref['extra_bytes'] / max(cell['extra_bytes'], 1):.1f}x less, {ref['seconds'] / cell['seconds']:.2f}x faster"
                      if "seconds" in ref and impl != "pml_supcon" else "")
            print(f"{n:>6} | {impl:>15} | {fmt_mib(cell['extra_bytes']):>13} | {cell['seconds']:>7.2f}s | {vs_ref}")


if __name__ == "__main__":
    main()

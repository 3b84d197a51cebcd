"""ArcFace forward+backward over huge class counts: dmlscale's ShardedArcFaceLoss on 1, 2 and 4 gloo ranks
(each rank owns ~C/W classes) vs PML's ArcFaceLoss on one process (which needs the B x C logits). CPU, fp32.

Run:  .venv/bin/python benchmarks/sharded_arcface.py [--classes 100000 1000000 4000000] [--batch 1024]
      [--dim 128] [--ranks 1 2 4] [--threads 1] [--repeats 2] [--class-tile 8192]

Every cell runs in fresh processes (a PML cell: one; a dmlscale cell: one per rank, joined by gloo on
127.0.0.1), each pinned to --threads torch threads. Memory = peak RSS (ru_maxrss) of a rank over its RSS
after imports: it counts the class weights it holds, their gradient and every buffer of the step (it is
not a tensor-allocation trace); the largest over the ranks is shown. Time = fastest of --repeats steps
(forward+backward of the global batch of --batch rows split evenly), the slowest rank's. A PML cell whose
estimate (PML_BYTES_PER_LOGIT per B x C logit, plus W and its gradient) exceeds --max-gib is skipped and
shows the estimate. With more ranks than cores the ranks share the cores (the time then shows contention).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import BYTES_PER_GIB, measure_step, report, run_child  # noqa: E402

# bytes per B x C logit that PML's ArcFaceLoss holds at its peak, measured with this script at B=1024, D=128:
# 0.43 GiB at C=20,000 (22.5 bytes per logit), 1.80 GiB at C=100,000 (18.9)
PML_BYTES_PER_LOGIT = 20


def pml_estimate_bytes(batch: int, classes: int, dim: int) -> int:
    return PML_BYTES_PER_LOGIT * batch * classes + 2 * 4 * dim * classes


def _inputs(batch: int, classes: int, dim: int, rank: int, world_size: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, dim, generator=gen)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    start, stop = rank * batch // world_size, (rank + 1) * batch // world_size
    return emb[start:stop].clone().requires_grad_(True), labels[start:stop].clone()


def _measure(loss_fn, emb, labels, repeats: int, baseline_kib: int) -> dict:
    """Seconds of forward+backward, peak RSS over `baseline_kib`, and the bytes of the class weights held."""
    def step():
        emb.grad, loss_fn.W.grad = None, None
        loss_fn(emb, labels).backward()

    result = measure_step(step, repeats)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result.update(peak_bytes=(peak_kib - baseline_kib) * 1024, block_bytes=loss_fn.W.numel() * 4)
    return result


def _rank_step(rank: int, world_size: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    from dmlscale.distributed.sharded_classification import ShardedArcFaceLoss

    warm = ShardedArcFaceLoss(64 * world_size, args.dim, class_tile=args.class_tile, init_seed=1)
    warm(*_inputs(16 * world_size, 64 * world_size, args.dim, rank, world_size)).backward()
    loss_fn = ShardedArcFaceLoss(args.classes[0], args.dim, class_tile=args.class_tile, init_seed=0)
    emb, labels = _inputs(args.batch, args.classes[0], args.dim, rank, world_size)

    result = _measure(loss_fn, emb, labels, args.repeats, baseline_kib)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def child_dmlscale(world_size: int, args) -> None:
    import torch.multiprocessing as mp

    from dmlscale.distributed.env import free_port

    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_rank_step, args=(world_size, free_port(), args, out_dir), nprocs=world_size,
                           join=True, start_method="spawn")
        ranks = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.json")) as handle:
                ranks.append(json.load(handle))
    report({"seconds": max(r["seconds"] for r in ranks), "peak_bytes": max(r["peak_bytes"] for r in ranks),
            "block_bytes": max(r["block_bytes"] for r in ranks)})


def child_pml(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from pytorch_metric_learning.losses import ArcFaceLoss

    warm = ArcFaceLoss(num_classes=64, embedding_size=args.dim)
    warm(*_inputs(16, 64, args.dim, 0, 1)).backward()
    torch.manual_seed(0)
    loss_fn = ArcFaceLoss(num_classes=args.classes[0], embedding_size=args.dim)
    emb, labels = _inputs(args.batch, args.classes[0], args.dim, 0, 1)

    result = _measure(loss_fn, emb, labels, args.repeats, baseline_kib)
    report(result)


def fmt_gib(num_bytes: float) -> str:
    return f"{num_bytes / BYTES_PER_GIB:,.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--class-tile", type=int, default=8192)
    parser.add_argument("--max-gib", type=float, default=12.0, help="skip a PML cell estimated above this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "pml":
        return child_pml(args)
    if args.child:
        return child_dmlscale(int(args.child), args)
    print(f"ArcFace forward+backward, B={args.batch}, D={args.dim}, fp32, CPU, {args.threads} torch thread(s) "
          f"per process on {os.cpu_count()} cores; class tile {args.class_tile}; memory = peak RSS over the "
          f"post-import RSS, largest rank; time = fastest of {args.repeats}, slowest rank")
    print(f"{'classes':>9} | {'impl':>17} | {'W per rank':>10} | {'peak memory':>11} | {'time':>8} | "
          "vs PML (memory, time)")
    common = ["--batch", str(args.batch), "--dim", str(args.dim), "--threads", str(args.threads),
              "--repeats", str(args.repeats), "--class-tile", str(args.class_tile)]
    for classes in args.classes:
        need = pml_estimate_bytes(args.batch, classes, args.dim)
        if need > args.max_gib * BYTES_PER_GIB:
            pml = {"skipped": need}
        else:
            pml = run_child(__file__, ["pml", "--classes", str(classes), *common])
        cells = {"PML ArcFaceLoss": pml}
        for world_size in args.ranks:
            cells[f"dmlscale {world_size} rank{'s' if world_size > 1 else ''}"] = run_child(
                __file__, [str(world_size), "--classes", str(classes), *common])
        for impl, cell in cells.items():
            if "skipped" in cell:
                print(f"{classes:>9,} | {impl:>17} | skipped: needs ~{fmt_gib(cell['skipped'])} (> {args.max_gib} GiB)")
                continue
            if "error" in cell:
                print(f"{classes:>9,} | {impl:>17} | {cell['error']}")
                continue
            versus = ""
            if "peak_bytes" in pml and impl != "PML ArcFaceLoss":
                versus = (f"{pml['peak_bytes'] / max(cell['peak_bytes'], 1):.1f}x less, "
                          f"{pml['seconds'] / cell['seconds']:.2f}x faster")
            print(f"{classes:>9,} | {impl:>17} | {fmt_gib(cell['block_bytes']):>10} | "
                  f"{fmt_gib(cell['peak_bytes']):>11} | {cell['seconds']:>7.2f}s | {versus}", flush=True)


if __name__ == "__main__":
    main()

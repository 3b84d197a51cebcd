"""Scaling study of the contrastive loss layer: dmlscale's tiled CLIP and SigLIP against open_clip's local loss,
from single-machine measurements to global batches of 32k-1M pairs on 1-1024 ranks, checked against real runs.

Run:  .venv/bin/python benchmarks/scaling_model.py [--check-pairs 8192] [--check-ranks 1 2 4 8] [--dim 512]
      [--tile 1024] [--threads 1] [--repeats 2] [--calibration-pairs 4096] [--bandwidths 25 100 400] [--latency-us 10]
      [--accelerator-tflops 400] [--model ViT-B-32] [--plot benchmarks/results/scaling_model.png] [--no-check]

1. Calibration (scaling_calibration.py, a fresh process, --threads threads): the tile time and workspace of
   the dmlscale kernels, open_clip's seconds and bytes per logit, this machine's GEMM rate, the --model's
   forward+backward per pair, and (scaling_check.py) the loopback bandwidth of a 2-rank gloo all-gather.
2. Check (scaling_check.py): real gloo runs of each path at --check-ranks on this machine, global batch
   --check-pairs, against the model's prediction for that run (scaling_formulas.check_wall_seconds: ranks
   beyond the cores share them, comm at the measured loopback bandwidth).
3. Projection (scaling_formulas.py, its docstring states every assumption): per rank memory, bytes received,
   loss compute time, comm time at each of --bandwidths (GB/s per rank) with --latency-us per message, and
   the loss's share of a step whose model part is the measured --model time per pair. For the projection,
   compute times are scaled from this machine's GEMM rate to --accelerator-tflops (model and loss alike;
   0 keeps this machine's times); comm is not scaled.
4. The figure (scaling_plot.py) at --plot.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import report, run_child  # noqa: E402
from scaling_formulas import (PATHS, Calibration, check_cpu_seconds, check_wall_seconds,  # noqa: E402
                              comm_bytes, comm_seconds, compute_seconds, loss_share, memory_bytes)

DEFAULT_BATCHES = [32768 * 2**k for k in range(6)]  # 32k .. 1M
DEFAULT_RANKS = [2**k for k in range(11)]  # 1 .. 1024


def fmt_bytes(num_bytes: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:,.1f} {unit}"
    return f"{num_bytes:,.0f} B"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def error_pct(predicted: float, measured: float) -> str:
    return f"{100 * (predicted - measured) / measured:+.0f}%" if measured else "n/a"


def calibrate(args: argparse.Namespace) -> Calibration:
    from scaling_check import loopback_costs

    fields = run_child(__file__, ["calibrate", "--dim", str(args.dim), "--tile", str(args.tile), "--threads",
                                  str(args.threads), "--repeats", str(args.repeats), "--model", args.model,
                                  "--calibration-pairs", str(args.calibration_pairs)])
    if "error" in fields:
        raise SystemExit(f"calibration failed: {fields['error']}")
    rate, cpu_per_byte = loopback_costs(args.check_pairs * args.dim * 4, threads=args.threads, repeats=3)
    return Calibration(**fields, loopback_bytes_per_second=rate, loopback_cpu_seconds_per_byte=cpu_per_byte)


def print_calibration(cal: Calibration, args: argparse.Namespace) -> None:
    print(f"calibration ({args.threads} thread(s), {os.cpu_count()} cores; D={cal.dim}, tile {cal.tile}, fp32):")
    for path in ("dmlscale_clip", "dmlscale_siglip"):
        print(f"  {path}: {fmt_seconds(cal.tile_seconds[path])} per {cal.tile} x {cal.tile} tile (forward+backward), "
              f"workspace {fmt_bytes(cal.tile_workspace_bytes[path])}")
    print(f"  open_clip: {cal.open_clip_seconds_per_logit * 1e9:.2f} ns and {cal.open_clip_bytes_per_logit:.1f} bytes "
          "per logit (n x N, both directions)")
    print(f"  GEMM {cal.gemm_flops_per_second / 1e9:.1f} GFLOP/s; {args.model} forward+backward "
          f"{fmt_seconds(cal.model_seconds_per_pair)} per pair; gloo loopback "
          f"{cal.loopback_bytes_per_second / 1e9:.2f} GB/s received per rank, "
          f"{cal.loopback_cpu_seconds_per_byte * 2**20 * 1e3:.2f} ms CPU per MiB")


def run_check(cal: Calibration, args: argparse.Namespace) -> None:
    from scaling_check import measure_run

    cores = len(os.sched_getaffinity(0))
    print(f"\nmachine load average (1 min) before the check: {os.getloadavg()[0]:.1f} on {cores} cores")
    print(f"check: real gloo runs, N={args.check_pairs} pairs, D={args.dim}, {args.threads} thread(s) per rank "
          f"on {cores} cores; memory = peak RSS over the RSS before the step (largest rank), bytes = received on "
          f"the rank's TCP sockets; CPU s = the rank's CPU time of its fastest step (model: tiles x tile time + "
          f"bytes x loopback CPU per byte), "
          f"wall s = the slowest rank's fastest step (model: compute x max(1, ranks x threads / cores) + bytes / "
          f"loopback rate; other load on the machine lengthens it)")
    print(f"{'path':>15} | {'ranks':>5} | {'memory/rank: model':>18} {'measured':>10} {'error':>6} | "
          f"{'bytes/rank: model':>17} {'measured':>10} {'error':>6} | {'CPU s/rank: model':>17} {'measured':>8} "
          f"{'error':>6} | {'wall s: model':>13} {'measured':>8} {'error':>6}")
    for ranks in args.check_ranks:
        for path in PATHS:
            got = measure_run(path, args.check_pairs, ranks, dim=args.dim, tile=args.tile, threads=args.threads,
                              repeats=args.repeats)
            memory = memory_bytes(path, args.check_pairs, ranks, cal)
            received = comm_bytes(path, args.check_pairs, ranks, cal.dim, cal.bytes_per_value, backend="gloo")
            cpu = check_cpu_seconds(path, args.check_pairs, ranks, cal)
            wall = check_wall_seconds(path, args.check_pairs, ranks, cal, cores=cores, threads=args.threads)
            bytes_error = error_pct(received, got["received_bytes"]) if ranks > 1 else ""
            print(f"{path:>15} | {ranks:>5} | {fmt_bytes(memory):>18} {fmt_bytes(got['extra_bytes']):>10} "
                  f"{error_pct(memory, got['extra_bytes']):>6} | {fmt_bytes(received):>17} "
                  f"{fmt_bytes(got['received_bytes']):>10} {bytes_error:>6} | {cpu:>17.2f} {got['cpu_seconds']:>8.2f} "
                  f"{error_pct(cpu, got['cpu_seconds']):>6} | {wall:>13.2f} {got['wall_seconds']:>8.2f} "
                  f"{error_pct(wall, got['wall_seconds']):>6}", flush=True)
    print(f"machine load average (1 min) after the check: {os.getloadavg()[0]:.1f}")


def print_projection(cal: Calibration, args: argparse.Namespace, speedup: float) -> None:
    rate = f"{args.accelerator_tflops:g} TFLOP/s" if args.accelerator_tflops else "this machine"
    print(f"\nprojection: D={cal.dim}, fp32 features, tile {cal.tile}; compute at {rate} (x{speedup:,.0f}); "
          f"comm at {', '.join(f'{b:g}' for b in args.bandwidths)} GB/s per rank, {args.latency_us:g} us per message; "
          f"step = {args.model} forward+backward of the rank's pairs + loss compute + comm (no overlap)")
    comm_head = " / ".join(f"@{b:g}" for b in args.bandwidths)
    print(f"{'N':>9} | {'ranks':>5} | {'path':>15} | {'memory/rank':>11} | {'bytes/rank':>10} | {'loss compute':>12} | "
          f"comm {comm_head} GB/s | loss share {comm_head}")
    for global_pairs in args.batches:
        for ranks in (w for w in args.ranks if w <= global_pairs):
            for path in PATHS:
                comm = [comm_seconds(path, global_pairs, ranks, cal, bytes_per_second=b * 1e9,
                                     latency_seconds=args.latency_us * 1e-6) for b in args.bandwidths]
                share = [loss_share(path, global_pairs, ranks, cal, bytes_per_second=b * 1e9,
                                    latency_seconds=args.latency_us * 1e-6, speedup=speedup) for b in args.bandwidths]
                memory = memory_bytes(path, global_pairs, ranks, cal)
                print(f"{global_pairs:>9,} | {ranks:>5} | {path:>15} | {fmt_bytes(memory):>11} | "
                      f"{fmt_bytes(comm_bytes(path, global_pairs, ranks, cal.dim, cal.bytes_per_value)):>10} | "
                      f"{fmt_seconds(compute_seconds(path, global_pairs, ranks, cal) / speedup):>12} | "
                      f"{' / '.join(fmt_seconds(c) for c in comm)} | {' / '.join(f'{100 * s:.0f}%' for s in share)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-pairs", type=int, default=8192, help="global batch of the real runs")
    parser.add_argument("--check-ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calibration-pairs", type=int, default=4096, help="batch of the one-process open_clip run")
    parser.add_argument("--batches", type=int, nargs="+", default=DEFAULT_BATCHES, help="projected global batches")
    parser.add_argument("--ranks", type=int, nargs="+", default=DEFAULT_RANKS, help="projected rank counts")
    parser.add_argument("--bandwidths", type=float, nargs="+", default=[25, 100, 400], help="GB/s per rank")
    parser.add_argument("--latency-us", type=float, default=10.0, help="latency per collective message")
    parser.add_argument("--accelerator-tflops", type=float, default=400.0,
                        help="GEMM rate the projected compute is scaled to (0: this machine)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model whose step the loss is a share of")
    parser.add_argument("--plot", default="benchmarks/results/scaling_model.png")
    parser.add_argument("--no-check", action="store_true", help="skip the real runs")
    parser.add_argument("--child", choices=["calibrate"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from scaling_calibration import calibrate as measure

        report(measure(dim=args.dim, tile=args.tile, threads=args.threads, repeats=args.repeats, tiles_per_side=2,
                       open_clip_pairs=args.calibration_pairs, model_name=args.model))
        return
    for name in ("check_pairs", "calibration_pairs", "dim", "tile", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.accelerator_tflops < 0:
        raise ValueError(f"--accelerator-tflops must be >= 0, got {args.accelerator_tflops}")
    cal = calibrate(args)
    print_calibration(cal, args)
    if not args.no_check:
        run_check(cal, args)
    speedup = args.accelerator_tflops * 1e12 / cal.gemm_flops_per_second if args.accelerator_tflops else 1.0
    print_projection(cal, args, speedup)
    if args.plot:
        from scaling_plot import plot_scaling

        middle = args.bandwidths[len(args.bandwidths) // 2]
        picked = sorted({args.batches[0], args.batches[len(args.batches) // 2], args.batches[-1]})
        written = plot_scaling(args.plot, cal, batches=picked, ranks=args.ranks, bytes_per_second=middle * 1e9,
                               latency_seconds=args.latency_us * 1e-6, speedup=speedup)
        print(f"\nplot: {written} (global batches {', '.join(f'{b:,}' for b in picked)}; share at {middle:g} GB/s)")


if __name__ == "__main__":
    main()

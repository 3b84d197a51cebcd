"""The analytic scaling model of the contrastive loss layer: memory per rank, bytes per step, loss time, and
the loss's share of a training step; pure arithmetic on a `Calibration` measured on one machine.

Legend: N global pairs, W ranks, n = ceil(N / W) pairs on the largest rank, D feature size, b bytes per
value, T tile size. Paths: "dmlscale_clip" and "dmlscale_siglip" (DistributedClipLoss and
DistributedSigLipLoss on their tiled path) and "open_clip" (open_clip's ClipLoss(local_loss=True,
gather_with_grad=True), which forms the n x N logits of both directions).

Memory per rank: the loss layer's buffers beyond its inputs at the step's peak, counted from the code,
with the tile workspace and open_clip's bytes per logit measured:
  dmlscale:  workspace + (N + n) D b (the gradients of the gathered texts and of the local images)
             + N D b when W > 1 (the gathered texts: alive with their gradient in the backward; the gather's
             buckets, and the padded gradient the reduce-scatter sums, take the same room at their moments)
             + CLIP's log-sum-exp statistics (n + 3 N) b
  open_clip: beta n N (beta: bytes per logit, measured) + 2 n D b (input gradients)
             + 2 N D b when W > 1 (gathered images and texts, kept for the backward)
Bytes each rank receives per step, ring collectives (an all-gather or all-to-all receives W - 1 blocks, an
all-reduce of S bytes receives 2 (W - 1) / W S):
  dmlscale:  all-gather of the texts (W - 1) n D b; in the backward, a reduce-scatter of their gradient,
             (W - 1) n D b on NCCL, which gloo runs as an all-reduce of all N x D (so backend="gloo" for
             the check on this machine); CLIP only: two all-reduces (max, then sum) of the N column log-sum-exps
  open_clip: all-gathers of images and texts 2 (W - 1) n D b; all-to-alls of both gradients 2 (W - 1) n D b
Time: loss compute = n N / T^2 tiles (a partial tile counts by its area) x the measured tile time; open_clip
n N x its measured seconds per logit. A collective takes latency + received bytes / bandwidth, with a
latency of (W - 1) alpha for a ring all-gather or all-to-all and 2 log2(W) alpha for an all-reduce (tree
latency, ring bandwidth). Nothing overlaps: step = model forward+backward of n pairs + loss compute + comm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PATHS = ("dmlscale_clip", "dmlscale_siglip", "open_clip")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Single-machine figures the model scales up (all measured, see scaling_calibration.py)."""

    dim: int
    tile: int
    bytes_per_value: int
    tile_seconds: dict[str, float]  # dmlscale path -> forward+backward seconds of one T x T tile
    tile_workspace_bytes: dict[str, int]  # dmlscale path -> peak bytes beyond the counted O(N D) buffers
    open_clip_seconds_per_logit: float  # forward+backward, per element of the n x N matrix (both directions)
    open_clip_bytes_per_logit: float
    model_seconds_per_pair: float  # the stated model's forward+backward per image-text pair
    gemm_flops_per_second: float  # this machine's T x T x D matrix product rate (the projection's yardstick)
    loopback_bytes_per_second: float  # gloo all-gather over 127.0.0.1, bytes received per second
    loopback_cpu_seconds_per_byte: float  # and the CPU time a rank spends on it per byte received


def check_path(path: str) -> None:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")


def local_pairs(global_pairs: int, ranks: int) -> int:
    """n: the pairs of the largest rank."""
    if global_pairs < ranks or ranks < 1:
        raise ValueError(f"need 1 <= ranks <= global pairs, got ranks={ranks}, global pairs={global_pairs}")
    return -(-global_pairs // ranks)


def memory_bytes(path: str, global_pairs: int, ranks: int, cal: Calibration) -> float:
    """Loss-layer peak memory per rank (bytes); see the module docstring."""
    check_path(path)
    n, big_n, row = local_pairs(global_pairs, ranks), global_pairs, cal.dim * cal.bytes_per_value
    gathered = 1 if ranks > 1 else 0
    if path == "open_clip":
        return cal.open_clip_bytes_per_logit * n * big_n + 2 * n * row + 2 * gathered * big_n * row
    statistics = (n + 3 * big_n) * cal.bytes_per_value if path == "dmlscale_clip" else 0
    return cal.tile_workspace_bytes[path] + (big_n + n) * row + gathered * big_n * row + statistics


BACKENDS = ("nccl", "gloo")


def collectives(path: str, global_pairs: int, ranks: int, dim: int, bytes_per_value: int,
                backend: str = "nccl") -> list[tuple[str, float]]:
    """(kind, bytes this rank receives) of every collective of one step; kind: all_gather, all_to_all,
    all_reduce, reduce_scatter. gloo runs a reduce-scatter as an all-reduce (measured)."""
    check_path(path)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if ranks == 1:
        return []
    n, row = local_pairs(global_pairs, ranks), dim * bytes_per_value
    ring = 2 * (ranks - 1) / ranks
    if path == "open_clip":
        block = (ranks - 1) * n * row
        return [("all_gather", block), ("all_gather", block), ("all_to_all", block), ("all_to_all", block)]
    backward = (("reduce_scatter", (ranks - 1) * n * row) if backend == "nccl"
                else ("all_reduce", ring * global_pairs * row))
    steps = [("all_gather", (ranks - 1) * n * row), backward]
    if path == "dmlscale_clip":
        steps += [("all_reduce", ring * global_pairs * bytes_per_value)] * 2
    return steps


def comm_bytes(path: str, global_pairs: int, ranks: int, dim: int, bytes_per_value: int,
               backend: str = "nccl") -> float:
    """Bytes one rank receives per step."""
    return sum(size for _, size in collectives(path, global_pairs, ranks, dim, bytes_per_value, backend))


def comm_seconds(path: str, global_pairs: int, ranks: int, cal: Calibration, *, bytes_per_second: float,
                 latency_seconds: float) -> float:
    """Seconds of the step's collectives at the stated bandwidth per rank and per-message latency."""
    if bytes_per_second <= 0 or latency_seconds < 0:
        raise ValueError(f"need bandwidth > 0 and latency >= 0, got {bytes_per_second} B/s, {latency_seconds} s")
    total = 0.0
    for kind, size in collectives(path, global_pairs, ranks, cal.dim, cal.bytes_per_value):
        hops = 2 * math.log2(ranks) if kind == "all_reduce" else ranks - 1
        total += hops * latency_seconds + size / bytes_per_second
    return total


def compute_seconds(path: str, global_pairs: int, ranks: int, cal: Calibration) -> float:
    """Loss forward+backward compute per step on one rank at this machine's measured speed."""
    check_path(path)
    area = local_pairs(global_pairs, ranks) * global_pairs
    if path == "open_clip":
        return area * cal.open_clip_seconds_per_logit
    return area / cal.tile**2 * cal.tile_seconds[path]


def loss_share(path: str, global_pairs: int, ranks: int, cal: Calibration, *, bytes_per_second: float,
               latency_seconds: float, speedup: float = 1.0) -> float:
    """Loss compute + comm over the whole step (model + loss + comm); compute times divided by `speedup`."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    loss = compute_seconds(path, global_pairs, ranks, cal) / speedup
    comm = comm_seconds(path, global_pairs, ranks, cal, bytes_per_second=bytes_per_second,
                        latency_seconds=latency_seconds)
    model = local_pairs(global_pairs, ranks) * cal.model_seconds_per_pair / speedup
    return (loss + comm) / (model + loss + comm)


def check_cpu_seconds(path: str, global_pairs: int, ranks: int, cal: Calibration) -> float:
    """Predicted CPU time of one rank's loss step in a real run on this machine: its compute, and gloo's
    CPU time for the bytes it moves over loopback."""
    moved = comm_bytes(path, global_pairs, ranks, cal.dim, cal.bytes_per_value, backend="gloo")
    return compute_seconds(path, global_pairs, ranks, cal) + moved * cal.loopback_cpu_seconds_per_byte


def check_wall_seconds(path: str, global_pairs: int, ranks: int, cal: Calibration, *, cores: int,
                       threads: int) -> float:
    """Predicted wall time of a loss step of a real run on this machine: W ranks of `threads` threads share
    `cores` cores (each rank's compute stretches by W threads / cores when that exceeds 1), comm over loopback."""
    stretch = max(1.0, ranks * threads / cores)
    moved = comm_bytes(path, global_pairs, ranks, cal.dim, cal.bytes_per_value, backend="gloo")
    comm = moved / cal.loopback_bytes_per_second
    return compute_seconds(path, global_pairs, ranks, cal) * stretch + comm

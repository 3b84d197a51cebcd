"""Autograd-aware collectives that accept different local batch sizes on different ranks.

Legend: n local rows, N global rows (sum of every rank's n), D trailing feature size.
Every function takes the process group explicitly (None: the default group) and works in a single
process too, where it is the identity.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool]
_MAX_DIMS = 6


def world_rank_and_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in the group; (0, 1) when no process group is running."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _describe(meta_row: list[int]) -> str:
    ndim, dtype_code = meta_row[0], meta_row[1]
    shape = tuple(meta_row[2:2 + ndim])
    dtype = _DTYPES[dtype_code] if 0 <= dtype_code < len(_DTYPES) else f"dtype#{dtype_code}"
    return f"shape {shape} {dtype}"


def gather_sizes(x: torch.Tensor, group: dist.ProcessGroup | None = None, *, name: str = "tensor") -> list[int]:
    """Every rank's number of rows of `x`, after checking that all ranks agree on the trailing shape
    and dtype. A disagreement raises the same ValueError on every rank (naming ranks and shapes),
    before any data collective could hang or crash."""
    rank, world_size = world_rank_and_size(group)
    if x.ndim < 1 or x.ndim > _MAX_DIMS:
        raise ValueError(f"{name} must have 1 to {_MAX_DIMS} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name} has unsupported dtype {x.dtype}")
    if world_size == 1:
        return [x.shape[0]]
    meta = [x.ndim, _DTYPES.index(x.dtype), *x.shape] + [0] * (_MAX_DIMS - x.ndim)
    meta_t = torch.tensor(meta, dtype=torch.int64, device=x.device)
    gathered = [torch.empty_like(meta_t) for _ in range(world_size)]
    dist.all_gather(gathered, meta_t, group=group)
    rows = [g.tolist() for g in gathered]
    reference = rows[rank]
    for other, row in enumerate(rows):
        if row[0] != reference[0] or row[1] != reference[1] or row[3:] != reference[3:]:
            listing = ", ".join(f"rank {r}: {_describe(m)}" for r, m in enumerate(rows))
            raise ValueError(
                f"ranks disagree on the {name} to gather (all dimensions but the first, and the dtype, must match): "
                f"rank {rank} has {_describe(reference)} but rank {other} has {_describe(row)}; all ranks: {listing}"
            )
    return [row[2] for row in rows]


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenate every rank's rows (in rank order) through one padded all_gather."""
    max_rows = max(sizes)
    padded = x.new_zeros((max_rows, *x.shape[1:]))
    padded[: x.shape[0]] = x
    buckets = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buckets, padded.contiguous(), group=group)
    return torch.cat([b[:n] for b, n in zip(buckets, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_nD, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x_nD, sizes, group)

    @staticmethod
    def backward(ctx, grad_ND):
        # reduce-scatter, not all-reduce: each rank receives only the sum of its own rows (a ring moves half
        # the bytes, and no rank holds a second N x D buffer of summed gradients)
        sizes, max_rows = ctx.sizes, max(ctx.sizes)
        padded = grad_ND.new_zeros((len(sizes) * max_rows, *grad_ND.shape[1:]))
        for rank, (start, rows) in enumerate(zip(global_offsets(sizes), sizes)):
            padded[rank * max_rows : rank * max_rows + rows] = grad_ND[start : start + rows]
        mine = grad_ND.new_empty((max_rows, *grad_ND.shape[1:]))
        _reduce_scatter(mine, padded, group=ctx.group)
        return mine[: sizes[ctx.rank]], None, None, None


def _reduce_scatter(output: torch.Tensor, input: torch.Tensor, group) -> None:
    """Sum `input` (world_size equal blocks) over the ranks; rank r receives block r in `output`."""
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # torch >= 2.14 name
    reduce_scatter(output, input, op=dist.ReduceOp.SUM, group=group)


def all_gather_with_grad(x_nD: torch.Tensor, group: dist.ProcessGroup | None = None, *, name: str = "embeddings",
                         sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows of x, concatenated in rank order (N x ...); local sizes may differ. `sizes`:
    the result of `gather_sizes` for this very tensor, when the caller already has it (skips a collective).

    Gradients: the backward sums, over all ranks, the gradient each rank's graph sent to the gathered
    tensor, and returns to each rank the rows it owns (reduce-scatter semantics). So if every rank
    computes a loss L_r from the gathered tensor, rank i's input receives sum_r dL_r/dx_i, exactly as
    one process computing sum_r L_r on the concatenated batch.
    """
    rank, world_size = world_rank_and_size(group)
    sizes = gather_sizes(x_nD, group, name=name) if sizes is None else sizes
    if world_size == 1:
        return x_nD
    return _AllGatherWithGrad.apply(x_nD, sizes, rank, group)


def all_gather_no_grad(x_n: torch.Tensor, group: dist.ProcessGroup | None = None, *, name: str = "tensor",
                       sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows of x (labels, indices, ...), concatenated in rank order; no gradient flows.
    `sizes` as in all_gather_with_grad."""
    _, world_size = world_rank_and_size(group)
    sizes = gather_sizes(x_n, group, name=name) if sizes is None else sizes
    if world_size == 1:
        return x_n
    with torch.no_grad():
        return _gather_padded(x_n.detach(), sizes, group)


def global_offsets(sizes: list[int]) -> list[int]:
    """Row offset of each rank's block in the gathered tensor."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    return offsets


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait for every rank (bounded by the group's timeout); nothing for one process."""
    if world_rank_and_size(group)[1] > 1:
        dist.barrier(group=group)


def all_gather_objects(obj: T, group: dist.ProcessGroup | None = None) -> list[T]:
    """Every rank's picklable `obj` in rank order (`[obj]` for one process); no tensors, no gradient."""
    _, world_size = world_rank_and_size(group)
    if world_size == 1:
        return [obj]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def broadcast_object(obj: T, src: int = 0, group: dist.ProcessGroup | None = None) -> T:
    """Rank `src`'s picklable `obj` on every rank (`obj` itself for one process); no tensors, no gradient."""
    if world_rank_and_size(group)[1] == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def _all_reduce_no_grad(x: torch.Tensor, op, group) -> torch.Tensor:
    _, world_size = world_rank_and_size(group)
    out = x.detach().clone()
    if world_size > 1:
        dist.all_reduce(out, op=op, group=group)
    return out


def all_reduce_sum_no_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Elementwise sum over ranks of a copy of x (statistics, counts); no gradient flows."""
    return _all_reduce_no_grad(x, dist.ReduceOp.SUM, group)


def all_reduce_min_no_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Elementwise minimum over ranks of a copy of x (e.g. the lowest rank that raised a flag); no gradient."""
    return _all_reduce_no_grad(x, dist.ReduceOp.MIN, group)


def all_reduce_logsumexp_no_grad(lse: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """log(sum over ranks of exp(lse_r)), elementwise: combines partial log-sum-exps (O(len) traffic)."""
    _, world_size = world_rank_and_size(group)
    if world_size == 1:
        return lse.detach().clone()
    peak = lse.detach().clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.exp(lse.detach() - safe_peak)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return safe_peak + torch.log(total)

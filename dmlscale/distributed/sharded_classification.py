"""Classification losses over huge class counts: the class-weight matrix sharded by class across ranks.

Legend: n local rows, N global rows, D embedding size, C this rank's classes, K all classes.

Rank r owns the contiguous classes [start_r, end_r) of `class_block` (the first K mod W ranks get one
class more; a rank may own none when K < W) as an ordinary nn.Parameter W of shape D x C (PML's layout,
columns are classes). Forward on every rank:

1. gather the global batch: unit embeddings with gradient (`all_gather_with_grad`), labels without;
2. stream the N x C logits scale * cos(e_i, w_c) over class tiles (kernels/margin_softmax.py): the
   log-sum-exp over this block's non-target classes, and the target cosine of the rows whose class
   this rank owns, to which the margin is applied (only the owner holds a row's target logit);
3. merge across ranks: lse_i = log sum_r exp(lse_ri) (all-reduce of max and sum-exp), target logit
   t_i = sum_r t_ri (one owner, zeros elsewhere);
4. loss = mean_i (lse_i - t_i) over the GLOBAL batch (PML's cross-entropy with its MeanReducer).

Gradients (exact): the collectives in steps 3 carry none; instead rank r's graph receives
d lse_i / d lse_ri = exp(lse_ri - lse_i), i.e. softmax with the GLOBAL normaliser on its own logits, and
-1/N on the target logits it owns. Every rank's graph therefore holds exactly its own terms of the
single-process gradient: its block's W gradient is the single-process slice, and the all-gather backward
sums the ranks' embedding terms into the owner of each row. The value is the same on every rank.
With `data_parallel=True` the embedding gradient is multiplied by W (the convention of
DistributedLoss: a DDP/DeepSpeed average over ranks then restores the exact embedder gradient);
the class blocks are never averaged, as each is owned by one rank only.

Exact path only: no class sampling (Partial FC) is done.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dmlscale.distributed.collectives import (all_gather_no_grad, all_gather_with_grad, all_reduce_logsumexp_no_grad,
                                              all_reduce_sum_no_grad, gather_sizes, world_rank_and_size)
from dmlscale.kernels.margin_softmax import (MARGIN_TYPES, block_logsumexp, margin_target_logits, merged_logsumexp,
                                           sum_with_part_grad)
from dmlscale.param_checks import check_positive_int, check_real

DEFAULT_CLASS_TILE = 8192


def class_block(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` owns: contiguous blocks, the first K mod W one class larger."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


INIT_CHUNK = 4096  # classes per seeded block of the initial weights


@dataclass(frozen=True)
class OwnedBlock:
    """Where a rank-owned parameter sits in the full one: classes [start, end) of num_classes, along
    dimension `dim`, `per_class` entries per class (sub-centres, centres) laid out class-major."""

    start: int
    end: int
    num_classes: int
    dim: int = 1
    per_class: int = 1

    def narrow(self, tensor: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Classes [start, end) (global numbers within this block) of `tensor`, a value of this block's shape."""
        return tensor.narrow(self.dim, (start - self.start) * self.per_class, (end - start) * self.per_class)


def seeded_columns(init_seed: int, embedding_size: int, start: int, end: int) -> torch.Tensor:
    """Columns [start, end) of a standard-normal D x K matrix that depends on init_seed alone, not on the
    world size: column c comes from block c // INIT_CHUNK, drawn from its own generator. So a run's
    initial class weights are the same at any number of ranks."""
    columns = []
    for block in range(start // INIT_CHUNK, -(-end // INIT_CHUNK)):
        generator = torch.Generator().manual_seed((init_seed * 0x9E3779B1 + block) % 2**32)  # torch keeps 32 bits
        values_DC = torch.randn(embedding_size, INIT_CHUNK, generator=generator)
        low, high = max(start, block * INIT_CHUNK), min(end, (block + 1) * INIT_CHUNK)
        columns.append(values_DC[:, low - block * INIT_CHUNK:high - block * INIT_CHUNK])
    return torch.cat(columns, dim=1) if columns else torch.empty(embedding_size, 0)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor: float):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class ShardedMarginSoftmaxLoss(torch.nn.Module):
    """Cross-entropy over scale * (cosine with a margin on the target class), classes sharded over ranks.

    loss = mean_i [log sum_c exp(s * f_ic) - s * f_iy_i], f_ic = cos(e_i, w_c) for c != y_i and
    f_iy = margin(cos(e_i, w_y)): ArcFace cos(theta + m) (m in degrees, PML's fallback past pi - m),
    CosFace cos - m, normalized_softmax cos (s = 1 / temperature). Embeddings and class columns are
    L2-normalised, as PML's ArcFaceLoss / CosFaceLoss / NormalizedSoftmaxLoss do.
    """

    def __init__(self, num_classes: int, embedding_size: int, *, margin_type: str = "arcface", margin: float = 28.6,
                 scale: float = 64.0, class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False,
                 init_seed: int | None = None, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"{name}: margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        if data_parallel not in (True, False):
            raise ValueError(f"{name}: data_parallel must be True or False, got {data_parallel!r}")
        self.num_classes = check_positive_int(name, "num_classes", num_classes)
        self.embedding_size = check_positive_int(name, "embedding_size", embedding_size)
        self.class_tile = check_positive_int(name, "class_tile", class_tile)
        self.scale = check_real(name, "scale", scale, minimum=0, strict=True)
        self.margin = check_real(name, "margin", margin)
        if margin_type == "normalized_softmax" and self.margin != 0:
            warnings.warn(f"{name}: margin={margin!r} has no effect with margin_type='normalized_softmax'",
                          stacklevel=2)
        self.margin_type, self.data_parallel, self.group = margin_type, data_parallel, group
        self.rank, self.world_size = world_rank_and_size(group)
        self.class_start, self.class_end = class_block(self.num_classes, self.world_size, self.rank)
        self.W = torch.nn.Parameter(torch.empty(self.embedding_size, self.class_end - self.class_start))
        with torch.no_grad():
            if init_seed is None:
                self.W.normal_()  # PML's default init (normal_), from this rank's generator
            else:
                self.W.copy_(seeded_columns(init_seed, self.embedding_size, self.class_start, self.class_end))

    def extra_repr(self) -> str:
        return (f"margin_type={self.margin_type!r}, margin={self.margin}, scale={self.scale}, "
                f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, class_tile={self.class_tile}")

    @property
    def _margin_value(self) -> float:
        """The margin as the kernel takes it: radians for ArcFace (the option is in degrees, as in PML)."""
        return math.radians(self.margin) if self.margin_type == "arcface" else self.margin

    def owned_blocks(self) -> dict[str, OwnedBlock]:
        """{parameter name: its block}: the parameters this rank owns, which a data-parallel average must skip."""
        return {"W": OwnedBlock(self.class_start, self.class_end, self.num_classes)}

    def load_full_weight(self, full_weight_DK: torch.Tensor) -> None:
        """Copy this rank's columns [class_start, class_end) of a full D x K matrix (e.g. PML's `loss.W`)."""
        expected = (self.embedding_size, self.num_classes)
        if tuple(full_weight_DK.shape) != expected:
            raise ValueError(f"full weight must have shape {expected}, got {tuple(full_weight_DK.shape)}")
        with torch.no_grad():
            self.W.copy_(full_weight_DK[:, self.class_start:self.class_end])

    def gather_full_weight(self) -> torch.Tensor:
        """The full D x K matrix on every rank (a collective: call it on all ranks; only for small K)."""
        with torch.no_grad():
            rows_CD = self.W.detach().t().contiguous()
            return all_gather_no_grad(rows_CD, self.group, name="class weights").t()

    def _global_labels(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """(per-rank sizes, the N global labels), raising the same ValueError on every rank for bad input."""
        sizes = gather_sizes(embeddings, self.group, name="embeddings")
        label_sizes = gather_sizes(labels, self.group, name="labels")
        if sizes != label_sizes:
            raise ValueError(f"every rank needs one label per embedding: embeddings per rank {sizes}, "
                             f"labels per rank {label_sizes}")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have shape (n, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
        if embeddings.dtype != self.W.dtype:
            raise ValueError(f"embeddings dtype {embeddings.dtype} differs from the class weights' {self.W.dtype}: "
                             "cast the loss (e.g. .double()) or the embeddings")
        labels_N = all_gather_no_grad(labels, self.group, name="labels", sizes=sizes).long()
        bad_N = (labels_N < 0) | (labels_N >= self.num_classes)
        if bool(bad_N.any()):
            rows = torch.nonzero(bad_N).squeeze(1)[:5].tolist()
            listing = ", ".join(f"label {int(labels_N[i])} at global row {i}" for i in rows)
            raise ValueError(f"labels must lie in [0, {self.num_classes}) (num_classes={self.num_classes}): "
                             f"{int(bad_N.sum())} do not ({listing})")
        return sizes, labels_N

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's n embeddings and n labels -> the loss of the global batch (same value on every rank)."""
        if world_rank_and_size(self.group) != (self.rank, self.world_size):
            raise ValueError(f"the process group changed since construction: built for rank {self.rank} of "
                             f"{self.world_size}, now {world_rank_and_size(self.group)}")
        sizes, labels_N = self._global_labels(embeddings, labels)
        unit_nD = F.normalize(embeddings, p=2, dim=1)
        if self.data_parallel and self.world_size > 1:
            unit_nD = _ScaleGrad.apply(unit_nD, float(self.world_size))
        unit_ND = all_gather_with_grad(unit_nD, self.group, sizes=sizes)
        num_rows = labels_N.shape[0]
        if num_rows == 0:  # nothing to classify anywhere: 0, still attached to every input
            return (unit_ND.sum() + self.W.sum()) * 0
        owned_N = (labels_N >= self.class_start) & (labels_N < self.class_end)
        target_N = torch.where(owned_N, labels_N - self.class_start, torch.full_like(labels_N, -1))
        rest_lse_N, cos_target_N = block_logsumexp(unit_ND, self.W, target_N, scale=self.scale, tile=self.class_tile)
        target_logit_N = margin_target_logits(cos_target_N, margin_type=self.margin_type, margin=self._margin_value,
                                              scale=self.scale)
        target_logit_N = torch.where(owned_N, target_logit_N, torch.zeros_like(target_logit_N))
        part_lse_N = torch.where(owned_N, torch.logaddexp(rest_lse_N, target_logit_N), rest_lse_N)
        total_lse_N = all_reduce_logsumexp_no_grad(part_lse_N, self.group)
        total_target_N = all_reduce_sum_no_grad(target_logit_N, self.group)
        lse_N = merged_logsumexp(part_lse_N, total_lse_N)
        target_N = sum_with_part_grad(target_logit_N, total_target_N)
        return (lse_N - target_N).mean()


class ShardedArcFaceLoss(ShardedMarginSoftmaxLoss):
    """ArcFace (additive angular margin, in degrees) with PML's defaults margin=28.6, scale=64."""

    def __init__(self, num_classes: int, embedding_size: int, *, margin: float = 28.6, scale: float = 64.0,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_classes, embedding_size, margin_type="arcface", margin=margin, scale=scale,
                         class_tile=class_tile, data_parallel=data_parallel, init_seed=init_seed, group=group)


class ShardedCosFaceLoss(ShardedMarginSoftmaxLoss):
    """CosFace (additive cosine margin) with PML's defaults margin=0.35, scale=64."""

    def __init__(self, num_classes: int, embedding_size: int, *, margin: float = 0.35, scale: float = 64.0,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_classes, embedding_size, margin_type="cosface", margin=margin, scale=scale,
                         class_tile=class_tile, data_parallel=data_parallel, init_seed=init_seed, group=group)


class ShardedNormalizedSoftmaxLoss(ShardedMarginSoftmaxLoss):
    """Normalised softmax (no margin), logits cos / temperature, PML's default temperature 0.05."""

    def __init__(self, num_classes: int, embedding_size: int, *, temperature: float = 0.05,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        temperature = check_real(type(self).__name__, "temperature", temperature, minimum=0, strict=True)
        super().__init__(num_classes, embedding_size, margin_type="normalized_softmax", margin=0.0,
                         scale=1.0 / temperature, class_tile=class_tile, data_parallel=data_parallel,
                         init_seed=init_seed, group=group)
        self.temperature = temperature

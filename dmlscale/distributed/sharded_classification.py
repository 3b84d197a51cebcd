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

import torch
import torch.distributed as dist

from dmlscale.distributed.sharded_head import (DEFAULT_CLASS_TILE, INIT_CHUNK, OwnedBlock, ShardedClassLoss,
                                               class_block, seeded_columns)
from dmlscale.kernels.margin_softmax import MARGIN_TYPES, block_logsumexp, margin_target_logits
from dmlscale.param_checks import check_real

__all__ = ["DEFAULT_CLASS_TILE", "INIT_CHUNK", "OwnedBlock", "ShardedArcFaceLoss", "ShardedCosFaceLoss",
           "ShardedMarginSoftmaxLoss", "ShardedNormalizedSoftmaxLoss", "class_block", "seeded_columns"]


class ShardedMarginSoftmaxLoss(ShardedClassLoss):
    """Cross-entropy over scale * (cosine with a margin on the target class), classes sharded over ranks.

    loss = mean_i [log sum_c exp(s * f_ic) - s * f_iy_i], f_ic = cos(e_i, w_c) for c != y_i and
    f_iy = margin(cos(e_i, w_y)): ArcFace cos(theta + m) (m in degrees, PML's fallback past pi - m),
    CosFace cos - m, normalized_softmax cos (s = 1 / temperature). Embeddings and class columns are
    L2-normalised, as PML's ArcFaceLoss / CosFaceLoss / NormalizedSoftmaxLoss do.
    """

    def __init__(self, num_classes: int, embedding_size: int, *, margin_type: str = "arcface", margin: float = 28.6,
                 scale: float = 64.0, class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False,
                 init_seed: int | None = None, group: dist.ProcessGroup | None = None) -> None:
        name = type(self).__name__
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"{name}: margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        super().__init__(num_classes, embedding_size, class_tile=class_tile, data_parallel=data_parallel, group=group)
        self.scale = check_real(name, "scale", scale, minimum=0, strict=True)
        self.margin = check_real(name, "margin", margin)
        if margin_type == "normalized_softmax" and self.margin != 0:
            warnings.warn(f"{name}: margin={margin!r} has no effect with margin_type='normalized_softmax'",
                          stacklevel=2)
        self.margin_type = margin_type
        self.init_normal(init_seed)  # PML's default init (normal_)

    def extra_repr(self) -> str:
        return (f"margin_type={self.margin_type!r}, margin={self.margin}, scale={self.scale}, "
                f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, class_tile={self.class_tile}")

    @property
    def _margin_value(self) -> float:
        """The margin as the kernel takes it: radians for ArcFace (the option is in degrees, as in PML)."""
        return math.radians(self.margin) if self.margin_type == "arcface" else self.margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's n embeddings and n labels -> the loss of the global batch (same value on every rank)."""
        unit_ND, labels_N = self.gather_batch(embeddings, labels, normalize=True)
        if labels_N.shape[0] == 0:  # nothing to classify anywhere: 0, still attached to every input
            return self.zero_loss(unit_ND)
        owned_N, target_N = self.owned_targets(labels_N)
        rest_lse_N, cos_target_N = block_logsumexp(unit_ND, self.W, target_N, scale=self.scale, tile=self.class_tile)
        target_logit_N = margin_target_logits(cos_target_N, margin_type=self.margin_type, margin=self._margin_value,
                                              scale=self.scale)
        return self.cross_entropy_rows(owned_N, rest_lse_N, target_logit_N).mean()


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

"""Softmax heads over huge class counts whose logits are not a plain scaled cosine: several centres per
class (SubCenterArcFace, SoftTriple) or norms and a multiplicative angular margin (L-Softmax, SphereFace).

Legend: n local rows, N global rows, D embedding size, T classes of one tile, S entries per class,
R rows whose target class lies in the tile, K all classes.

Each class's parameters (its D x S columns, class-major as in PML's `W` / `fc`) sit on the rank that
owns the class, so every per-class reduction over its centres is local. Each rank streams the
log-sum-exp over its classes' non-target logits tile by tile (kernels/class_tiles.py) and the target
logits of the rows it owns; the parts merge across ranks as in ShardedArcFaceLoss: loss = mean_i
(lse_i - target_i) over the global batch, same value on every rank, exact gradients.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dmlscale.distributed.sharded_head import DEFAULT_CLASS_TILE, ShardedClassLoss
from dmlscale.kernels.class_tiles import tiled_logsumexp
from dmlscale.kernels.margin_softmax import margin_target_logits, multiplicative_angular_margin
from dmlscale.param_checks import check_positive_int, check_real


class _ShardedSoftmaxHead(ShardedClassLoss):
    """forward = mean over the global batch of the cross-entropy of `tile_logits` (set by the subclass)."""

    normalize_embeddings = True

    def tile_logits(self, e_ND: torch.Tensor, w_DX: torch.Tensor, rows_R: torch.Tensor,
                    cols_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's n embeddings and n labels -> the loss of the global batch (same value on every rank)."""
        e_ND, labels_N = self.gather_batch(embeddings, labels, normalize=self.normalize_embeddings)
        if labels_N.shape[0] == 0:
            return self.zero_loss(e_ND)
        owned_N, target_N = self.owned_targets(labels_N)
        rest_lse_N, target_logit_N = tiled_logsumexp(e_ND, self.weight, target_N, self.tile_logits, dim=1,
                                                     per_class=self.per_class, num_classes=self.num_owned,
                                                     tile=self.class_tile)
        return self.cross_entropy_rows(owned_N, rest_lse_N, target_logit_N).mean()

    def extra_repr(self) -> str:
        return (f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, {self.per_class} per class, "
                f"class_tile={self.class_tile}")


class ShardedSubCenterArcFaceLoss(_ShardedSoftmaxHead):
    """SubCenterArcFace (PML's SubCenterArcFaceLoss): the cosine of class c is the largest over its S
    sub-centres, max_s cos(e_i, w_cs), then ArcFace's additive angular margin (degrees) and scale on the
    target class. W is D x C*S, class-major (column c*S + s). Initial W: PML's normal_, from `init_seed`
    alone when given. PML's `get_outliers` (a data-cleaning helper, not part of the loss) is not provided."""

    def __init__(self, num_classes: int, embedding_size: int, *, margin: float = 28.6, scale: float = 64.0,
                 sub_centers: int = 3, class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False,
                 init_seed: int | None = None, group: dist.ProcessGroup | None = None) -> None:
        name = type(self).__name__
        sub_centers = check_positive_int(name, "sub_centers", sub_centers)
        super().__init__(num_classes, embedding_size, per_class=sub_centers, class_tile=class_tile,
                         data_parallel=data_parallel, group=group)
        self.margin = check_real(name, "margin", margin)
        self.scale = check_real(name, "scale", scale, minimum=0, strict=True)
        self.sub_centers = sub_centers
        self.init_normal(init_seed)  # PML's normal_

    def tile_logits(self, e_ND: torch.Tensor, w_DX: torch.Tensor, rows_R: torch.Tensor,
                    cols_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_NTS = (e_ND @ F.normalize(w_DX, p=2, dim=0)).view(e_ND.shape[0], -1, self.sub_centers)
        cos_NT = cos_NTS.max(dim=2).values
        target_R = margin_target_logits(cos_NT[rows_R, cols_R], margin_type="arcface",
                                        margin=math.radians(self.margin), scale=self.scale)
        return cos_NT * self.scale, target_R


class ShardedSoftTripleLoss(_ShardedSoftmaxHead):
    """SoftTriple (PML's SoftTripleLoss): class similarity S_ic = sum_s softmax_s(cos_ics / gamma) cos_ics over
    the class's centres, loss = cross-entropy of la * (S_ic - margin [c = y_i]). fc is D x C*S, class-major.
    Initial fc: PML's kaiming_uniform_(a=sqrt(5)) on the full D x K*S matrix, i.e. uniform on
    +-1/sqrt(K*S), from `init_seed` alone when given. (PML's class adds no centre regulariser; neither do we.)"""

    weight_name = "fc"

    def __init__(self, num_classes: int, embedding_size: int, *, centers_per_class: int = 10, la: float = 20.0,
                 gamma: float = 0.1, margin: float = 0.01, class_tile: int = DEFAULT_CLASS_TILE,
                 data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        name = type(self).__name__
        centers_per_class = check_positive_int(name, "centers_per_class", centers_per_class)
        super().__init__(num_classes, embedding_size, per_class=centers_per_class, class_tile=class_tile,
                         data_parallel=data_parallel, group=group)
        self.la = check_real(name, "la", la)
        self.gamma = check_real(name, "gamma", gamma, minimum=0, strict=True)
        self.margin = check_real(name, "margin", margin)
        self.centers_per_class = centers_per_class
        bound = 1.0 / math.sqrt(self.num_classes * centers_per_class)
        with torch.no_grad():
            if init_seed is None:
                self.fc.uniform_(-bound, bound)
            else:
                self.fc.copy_(self.seeded_uniform(init_seed, bound))

    def tile_logits(self, e_ND: torch.Tensor, w_DX: torch.Tensor, rows_R: torch.Tensor,
                    cols_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_NTS = (e_ND @ F.normalize(w_DX, p=2, dim=0)).view(e_ND.shape[0], -1, self.centers_per_class)
        similarity_NT = (F.softmax(cos_NTS * (1.0 / self.gamma), dim=2) * cos_NTS).sum(dim=2)
        return self.la * similarity_NT, self.la * (similarity_NT[rows_R, cols_R] - self.margin)


class ShardedLargeMarginSoftmaxLoss(_ShardedSoftmaxHead):
    """L-Softmax (PML's LargeMarginSoftmaxLoss): logits |e_i| |w_c| cos_ic * scale, the target's cosine
    replaced by psi(theta) = (-1)^k cos(m theta) - 2k (integer margin m). Initial W: PML's normal_, from
    `init_seed` alone when given."""

    normalize_embeddings = False  # the logits use the embeddings' norms
    uses_weight_norms = True

    def __init__(self, num_classes: int, embedding_size: int, *, margin: int = 4, scale: float = 1.0,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        name = type(self).__name__
        margin = check_positive_int(name, "margin", margin)
        super().__init__(num_classes, embedding_size, class_tile=class_tile, data_parallel=data_parallel, group=group)
        self.margin = margin
        self.scale = check_real(name, "scale", scale, minimum=0, strict=True)
        self.init_normal(init_seed)  # PML's normal_

    def tile_logits(self, e_ND: torch.Tensor, w_DX: torch.Tensor, rows_R: torch.Tensor,
                    cols_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_NT = F.normalize(e_ND, p=2, dim=1) @ F.normalize(w_DX, p=2, dim=0)
        norm_N = e_ND.norm(p=2, dim=1)
        magnitude_NT = norm_N[:, None].expand_as(cos_NT)
        if self.uses_weight_norms:
            magnitude_NT = magnitude_NT * w_DX.norm(p=2, dim=0)[None, :]
        target_R = multiplicative_angular_margin(cos_NT[rows_R, cols_R], self.margin)
        return cos_NT * magnitude_NT * self.scale, target_R * magnitude_NT[rows_R, cols_R] * self.scale


class ShardedSphereFaceLoss(ShardedLargeMarginSoftmaxLoss):
    """SphereFace (PML's SphereFaceLoss): as L-Softmax with unit class weights, logits |e_i| cos_ic * scale
    and psi on the target (integer margin, PML's default 4, scale 1)."""

    uses_weight_norms = False

"""Proxy losses over huge class counts: the K x D proxies sharded by class across ranks.

Legend: n local rows, N global rows, D embedding size, T classes of one tile, K all classes.

Rank r owns proxies [class_start, class_end) (rows of PML's `proxies`, `class_block`); every rank gathers
the global batch (unit embeddings with the exact gradient, labels) and scores it against its proxies
class tile by class tile (kernels/class_tiles.py), never holding more than N x class_tile scores. The
value is the same on every rank; each rank's proxies get exactly their slice of the single-process
gradient; `data_parallel=True` multiplies the embeddings' gradient by the world size (see sharded_head).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dmlscale.distributed.sharded_head import DEFAULT_CLASS_TILE, ShardedClassLoss
from dmlscale.kernels.class_tiles import tiled_class_sum, tiled_logsumexp
from dmlscale.param_checks import check_real


class ShardedProxyAnchorLoss(ShardedClassLoss):
    """Proxy Anchor (PML's ProxyAnchorLoss, cosine similarity s_ic between unit embedding and unit proxy):

    loss = 1/|P+| sum_{c in P+} log(1 + sum_{i: y_i = c} exp(-alpha (s_ic - margin)))
         + 1/K    sum_c          log(1 + sum_{i: y_i != c} exp(alpha (s_ic + margin)))

    P+ the classes with a positive in the GLOBAL batch. Both sums run over proxies, so each rank adds the
    terms of its own proxies (over all N rows) and one all-reduce sums them. Initial proxies: PML's
    kaiming_normal_(mode="fan_out"), i.e. normal with std sqrt(2 / K), from `init_seed` alone when given.
    """

    weight_name = "proxies"
    class_dim = 0

    def __init__(self, num_classes: int, embedding_size: int, *, margin: float = 0.1, alpha: float = 32.0,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_classes, embedding_size, class_tile=class_tile, data_parallel=data_parallel, group=group)
        name = type(self).__name__
        self.margin = check_real(name, "margin", margin)
        self.alpha = check_real(name, "alpha", alpha, minimum=0, strict=True)
        self.init_normal(init_seed, std=math.sqrt(2.0 / self.num_classes))  # kaiming_normal_, fan_out = K

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, alpha={self.alpha}, classes [{self.class_start}, {self.class_end}) of "
                f"{self.num_classes}, class_tile={self.class_tile}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's n embeddings and n labels -> the loss of the global batch (same value on every rank)."""
        unit_ND, labels_N = self.gather_batch(embeddings, labels, normalize=True)
        if labels_N.shape[0] == 0:
            return self.zero_loss(unit_ND)
        num_with_positives = int(torch.unique(labels_N).numel())
        local_N = labels_N - self.class_start
        alpha, margin, num_classes = self.alpha, self.margin, self.num_classes

        def tile_sum(e_ND: torch.Tensor, proxies_TD: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
            cos_NT = e_ND @ F.normalize(proxies_TD, p=2, dim=1).t()
            positive_NT = local_N[:, None] == torch.arange(c0, c1, device=e_ND.device)[None, :]
            ones_1T = cos_NT.new_zeros((1, c1 - c0))  # log(1 + sum): the 1 is exp(0)
            pos_NT = (alpha * (margin - cos_NT)).masked_fill(~positive_NT, float("-inf"))
            neg_NT = (alpha * (cos_NT + margin)).masked_fill(positive_NT, float("-inf"))
            pos_T = torch.logsumexp(torch.cat([pos_NT, ones_1T]), dim=0)
            neg_T = torch.logsumexp(torch.cat([neg_NT, ones_1T]), dim=0)
            return pos_T.sum() / num_with_positives + neg_T.sum() / num_classes

        part = tiled_class_sum(unit_ND, self.proxies, tile_sum, dim=0, per_class=1, num_classes=self.num_owned,
                               tile=self.class_tile)
        return self.summed_over_ranks(part)


class ShardedProxyNCALoss(ShardedClassLoss):
    """ProxyNCA (PML's ProxyNCALoss with its default distance, squared L2 between unit vectors):

    loss = mean_i [log sum_c exp(-s d_ic) + s d_iy_i],  d_ic = |e_i - p_c|^2 (unit e, unit p), s = softmax_scale

    i.e. -log of the softmax probability of the row's own proxy; as in PML, a row whose probability
    underflows to 0 is left out of the mean. Each rank streams the log-sum-exp over its proxies, merged
    across ranks as in ShardedArcFaceLoss. Initial proxies: PML's normal_, from `init_seed` alone when given.
    """

    weight_name = "proxies"
    class_dim = 0

    def __init__(self, num_classes: int, embedding_size: int, *, softmax_scale: float = 1.0,
                 class_tile: int = DEFAULT_CLASS_TILE, data_parallel: bool = False, init_seed: int | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_classes, embedding_size, class_tile=class_tile, data_parallel=data_parallel, group=group)
        self.softmax_scale = check_real(type(self).__name__, "softmax_scale", softmax_scale, minimum=0, strict=True)
        self.init_normal(init_seed)  # PML's normal_

    def extra_repr(self) -> str:
        return (f"softmax_scale={self.softmax_scale}, classes [{self.class_start}, {self.class_end}) of "
                f"{self.num_classes}, class_tile={self.class_tile}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's n embeddings and n labels -> the loss of the global batch (same value on every rank)."""
        unit_ND, labels_N = self.gather_batch(embeddings, labels, normalize=True)
        if labels_N.shape[0] == 0:
            return self.zero_loss(unit_ND)
        scale = self.softmax_scale

        def tile_logits(e_ND: torch.Tensor, proxies_TD: torch.Tensor, rows_R: torch.Tensor,
                        cols_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            unit_TD = F.normalize(proxies_TD, p=2, dim=1)
            squared_NT = (e_ND * e_ND).sum(1)[:, None] + (unit_TD * unit_TD).sum(1)[None, :] - 2 * e_ND @ unit_TD.t()
            logits_NT = squared_NT * -scale
            return logits_NT, logits_NT[rows_R, cols_R]

        owned_N, target_N = self.owned_targets(labels_N)
        rest_lse_N, target_logit_N = tiled_logsumexp(unit_ND, self.proxies, target_N, tile_logits, dim=0,
                                                     per_class=1, num_classes=self.num_owned, tile=self.class_tile)
        loss_N = self.cross_entropy_rows(owned_N, rest_lse_N, target_logit_N)
        kept_N = torch.exp(-loss_N.detach()) != 0  # PML drops rows whose own-proxy probability is 0
        num_kept = int(kept_N.sum())
        if num_kept == 0:
            return self.zero_loss(unit_ND)
        return torch.where(kept_N, loss_N, torch.zeros_like(loss_N)).sum() / num_kept

"""Multi-Similarity loss: per-row soft maxima (masked log-sum-exp) over positives and negatives.

Legend: B queries, R references, mat_BR the distance matrix, pos_BR / neg_BR 0/1 masks of the
positive / negative pairs, *_B one value per query row.

From labels it has a streamed path (`tiled`, automatic at max(B, R) >= tiled_threshold): per-row
online log-sum-exps over tiles (kernels/pairs.py), no B x R matrix.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.kernels.distance_tiles import normalised_pair
from dmlscale.kernels.label_pairs import negative_counts, positive_pairs
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.kernels.pairs import streamed_multisim_rows
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.losses.generic_pair_loss import GenericPairLoss, streams_from_labels
from dmlscale.param_checks import check_positive, check_real


class MultiSimilarityLoss(TilingSwitch, GenericPairLoss):
    """Multi-Similarity loss (Wang et al. 2019), for a similarity s and each anchor row a:

        L_a = 1/alpha log(1 + sum_{p} exp(-alpha (s_ap - base))) + 1/beta log(1 + sum_{n} exp(beta (s_an - base)))

    (for a distance the signs of (s - base) flip). One loss per query row, MeanReducer by default.
    """

    uses_masks = True

    def __init__(self, alpha: float = 2, beta: float = 50, base: float = 0.5, *, tiled: bool | None = None,
                 tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        check_positive(owner, "alpha", alpha)
        check_positive(owner, "beta", beta)
        check_real(owner, "base", base, finite=False)
        self.alpha, self.beta, self.base = alpha, beta, base
        self.add_to_recordable_attributes(list_of_names=["alpha", "beta", "base"], is_stat=False)
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if not streams_from_labels(self, embeddings, labels, indices_tuple, ref_emb):
            return super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index)
        num_pos = len(positive_pairs(labels, ref_labels, query_ref_index)[0])
        if num_pos <= 1 and int(negative_counts(labels, ref_labels).sum()) <= 1:
            return self.zero_losses()
        q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
        losses_B = streamed_multisim_rows(self.distance, q_BD, r_RD, labels, ref_labels, query_ref_index,
                                          alpha=self.alpha, beta=self.beta, base=self.base, tile=self.tile_size)
        return {"loss": {"losses": losses_B, "indices": torch.arange(len(losses_B), device=losses_B.device),
                         "reduction_type": "element"}}

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        pos_excess_BR = self.distance.margin(mat_BR, self.base)  # > 0 when a positive is farther than base
        neg_excess_BR = self.distance.margin(self.base, mat_BR)  # > 0 when a negative is closer than base
        pos_B = masked_logsumexp(self.alpha * pos_excess_BR, pos_BR > 0, add_one=True) / self.alpha
        neg_B = masked_logsumexp(self.beta * neg_excess_BR, neg_BR > 0, add_one=True) / self.beta
        return {"loss": {"losses": pos_B + neg_B, "indices": torch.arange(len(mat_BR), device=mat_BR.device), "reduction_type": "element"}}

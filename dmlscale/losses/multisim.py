"""Multi-Similarity and Circle losses: per-row soft maxima (masked log-sum-exp) over positives and negatives.

Legend: B queries, R references, mat_BR the distance matrix, pos_BR / neg_BR 0/1 masks of the
positive / negative pairs, *_B one value per query row.

MultiSimilarityLoss from labels has a streamed path (`tiled`, automatic at max(B, R) >=
tiled_threshold): per-row online log-sum-exps over tiles (losses/streamed_pairs.py), no B x R matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlscale.distances import CosineSimilarity
from dmlscale.losses.logsumexp import masked_logsumexp
from dmlscale.kernels.distance_tiles import normalised_pair
from dmlscale.losses.pair import GenericPairLoss, streams_from_labels
from dmlscale.losses.reducers import AvgNonZeroReducer
from dmlscale.kernels.mining import negative_counts, positive_pairs
from dmlscale.losses.streamed_pairs import streamed_multisim_rows
from dmlscale.tiling import DEFAULT_TILE, TilingSwitch
from dmlscale.param_checks import check_positive, check_real


def row_indices(mat_BR: torch.Tensor) -> torch.Tensor:
    return torch.arange(len(mat_BR), device=mat_BR.device)


class MultiSimilarityLoss(TilingSwitch, GenericPairLoss):
    """Multi-Similarity loss (Wang et al. 2019), for a similarity s and each anchor row a:

        L_a = 1/alpha log(1 + sum_{p} exp(-alpha (s_ap - base))) + 1/beta log(1 + sum_{n} exp(beta (s_an - base)))

    (for a distance the signs of (s - base) flip). One loss per query row, MeanReducer by default.
    """

    uses_masks = True

    def __init__(self, alpha: float = 2, beta: float = 50, base: float = 0.5, *, tiled: bool | None = None,
                 tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096, **kwargs) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        check_positive(owner, "alpha", alpha)
        check_positive(owner, "beta", beta)
        check_real(owner, "base", base, finite=False)
        self.alpha, self.beta, self.base = alpha, beta, base
        self.add_to_recordable_attributes(list_of_names=["alpha", "beta", "base"], is_stat=False)
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def get_default_distance(self):
        return CosineSimilarity()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index) -> dict:
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

    def mask_loss(self, mat_BR, pos_BR, neg_BR) -> dict:
        pos_excess_BR = self.distance.margin(mat_BR, self.base)  # > 0 when a positive is farther than base
        neg_excess_BR = self.distance.margin(self.base, mat_BR)  # > 0 when a negative is closer than base
        pos_B = masked_logsumexp(self.alpha * pos_excess_BR, pos_BR > 0, add_one=True) / self.alpha
        neg_B = masked_logsumexp(self.beta * neg_excess_BR, neg_BR > 0, add_one=True) / self.beta
        return {"loss": {"losses": pos_B + neg_B, "indices": row_indices(mat_BR), "reduction_type": "element"}}


class CircleLoss(GenericPairLoss):
    """Circle loss (Sun et al. 2020) on cosine similarities s, for each anchor row a:

        L_a = softplus( log sum_p exp(-gamma [1 + m - s_ap]_+ (s_ap - (1 - m)))
                      + log sum_n exp( gamma [s_an + m]_+     (s_an - m)) )

    with the weights [.]_+ detached (as in the paper), and L_a = 0 for rows lacking positives or
    negatives. AvgNonZeroReducer by default.
    """

    uses_masks = True

    def __init__(self, m: float = 0.4, gamma: float = 80, **kwargs) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        owner = type(self).__name__
        check_real(owner, "m", m, finite=False)
        check_positive(owner, "gamma", gamma)
        self.m, self.gamma = m, gamma
        self.op, self.on = 1 + m, -m  # optimum similarity of positives / negatives
        self.delta_p, self.delta_n = 1 - m, m  # decision margins
        self.add_to_recordable_attributes(list_of_names=["m", "gamma", "op", "on", "delta_p", "delta_n"],
                                          is_stat=False)

    def get_default_distance(self):
        return CosineSimilarity()

    def get_default_reducer(self):
        return AvgNonZeroReducer()

    def mask_loss(self, mat_BR, pos_BR, neg_BR) -> dict:
        is_pos_BR, is_neg_BR = pos_BR > 0, neg_BR > 0
        sim_BR = mat_BR.detach()
        pos_logits_BR = -self.gamma * torch.relu(self.op - sim_BR) * (mat_BR - self.delta_p)
        neg_logits_BR = self.gamma * torch.relu(sim_BR - self.on) * (mat_BR - self.delta_n)
        logits_BR = torch.where(is_pos_BR, pos_logits_BR, torch.where(is_neg_BR, neg_logits_BR, 0.0))
        del pos_logits_BR, neg_logits_BR
        lse_pos_B = masked_logsumexp(logits_BR, is_pos_BR, add_one=False)
        lse_neg_B = masked_logsumexp(logits_BR, is_neg_BR, add_one=False)
        has_both_B = is_pos_BR.any(dim=1) & is_neg_BR.any(dim=1)
        losses_B = F.softplus(lse_pos_B + lse_neg_B) * has_both_B.to(mat_BR.dtype)
        return {"loss": {"losses": losses_B, "indices": row_indices(mat_BR), "reduction_type": "element"}}

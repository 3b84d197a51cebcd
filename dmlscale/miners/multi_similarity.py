"""Multi-similarity mining (Wang et al. 2019): pairs that are informative relative to the hardest opposite pair.

Legend: B query rows, R reference rows; pos_BR / neg_BR the matrix with non-candidates pushed to the
end of an ascending sort, *_sorted_BR sorted per row, *_order_BR the column each sorted entry came from.

For a similarity s: keep positive (i, j) if s_ij - epsilon < max_k s_ik over negatives k, and negative
(i, k) if s_ik + epsilon > min_j s_ij over positives j. For a distance the inequalities flip.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import implicit_self_index, matches_and_diffs, self_pairs
from dmlscale.miners.base import BaseMiner, empty_indices
from dmlscale.param_checks import check_real


class MultiSimilarityMiner(BaseMiner):
    """Pairs (a1, p, a2, n); within each anchor, positives and negatives come in ascending order of value."""

    def __init__(self, epsilon: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_real(type(self).__name__, "epsilon", epsilon, finite=False)
        self.epsilon = epsilon

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        if not same_BR.any() or not diff_BR.any():
            return empty_indices(labels.device, 4)
        # Candidates as PML defines them: anything not of the other kind, and never a self pair
        # (i, query_ref_index[i]) (PML: the diagonal when the batch is compared with itself).
        pos_ok_BR, neg_ok_BR = ~diff_BR, ~same_BR
        self_rows, self_cols = self_pairs(query_ref_index)
        pos_ok_BR[self_rows, self_cols] = False
        neg_ok_BR[self_rows, self_cols] = False
        inf = float("inf")
        # ignored positives sort to the "easy" end, ignored negatives too
        pos_fill, neg_fill = (inf, -inf) if self.distance.is_inverted else (-inf, inf)
        pos_sorted_BR, pos_order_BR = torch.sort(mat_BR.masked_fill(~pos_ok_BR, pos_fill), dim=1)
        neg_sorted_BR, neg_order_BR = torch.sort(mat_BR.masked_fill(~neg_ok_BR, neg_fill), dim=1)
        if self.distance.is_inverted:
            hardest_neg_B, hardest_pos_B = neg_sorted_BR[:, -1], pos_sorted_BR[:, 0]
            hard_pos_BR = pos_sorted_BR - self.epsilon < hardest_neg_B[:, None]
            hard_neg_BR = neg_sorted_BR + self.epsilon > hardest_pos_B[:, None]
        else:
            hardest_neg_B, hardest_pos_B = neg_sorted_BR[:, 0], pos_sorted_BR[:, -1]
            hard_pos_BR = pos_sorted_BR + self.epsilon > hardest_neg_B[:, None]
            hard_neg_BR = neg_sorted_BR - self.epsilon < hardest_pos_B[:, None]
        a1, pos_rank = torch.where(hard_pos_BR)
        a2, neg_rank = torch.where(hard_neg_BR)
        return a1, pos_order_BR[a1, pos_rank], a2, neg_order_BR[a2, neg_rank]

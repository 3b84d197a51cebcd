"""Pair margin mining: positives that are too far and negatives that are too close.

Legend: P positive pairs, N negative pairs; pos_P, neg_N their distances (or similarities).

For a distance: keep positives with d > pos_margin and negatives with d < neg_margin.
For a similarity: keep positives with s < pos_margin and negatives with s > neg_margin.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import all_pairs, implicit_self_index
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real


class PairMarginMiner(BaseMiner):
    """Pairs (a1, p, a2, n) that violate their margin, in row-major order."""

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_real(type(self).__name__, "pos_margin", pos_margin, finite=False)
        check_real(type(self).__name__, "neg_margin", neg_margin, finite=False)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.add_to_recordable_attributes(list_of_names=["pos_pair_dist", "neg_pair_dist"], is_stat=True)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        a1_P, p_P, a2_N, n_N = all_pairs(labels, ref_labels, query_ref_index)
        pos_P = mat_BR[a1_P, p_P]
        neg_N = mat_BR[a2_N, n_N]
        if self.collect_stats:
            self.set_stats({"pos_pair_dist": pos_P.mean().item() if len(pos_P) else 0,
                            "neg_pair_dist": neg_N.mean().item() if len(neg_N) else 0})
        if self.distance.is_inverted:
            keep_P, keep_N = pos_P < self.pos_margin, neg_N > self.neg_margin
        else:
            keep_P, keep_N = pos_P > self.pos_margin, neg_N < self.neg_margin
        return a1_P[keep_P], p_P[keep_P], a2_N[keep_N], n_N[keep_N]

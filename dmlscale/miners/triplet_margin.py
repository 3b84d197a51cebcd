"""Triplet margin mining: keep the triplets whose margin d_an - d_ap is small enough.

Legend: T triplets; ap_T, an_T anchor-positive and anchor-negative values, gap_T = d_an - d_ap
(s_ap - s_an for a similarity: positive means the triplet is already ordered correctly).

type_of_triplets:  all: gap <= margin   hard: gap <= 0   semihard: 0 < gap <= margin   easy: gap > margin
Triplets are enumerated with `indices.all_triplets` (memory O(T), never a dense B x R x R mask).
"""

from __future__ import annotations


from dmlscale.indices import all_triplets
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


class TripletMarginMiner(BaseMiner):
    """Triplets (a, p, n) that violate (or, for "easy", satisfy) the margin; PML order (a, then p, then n)."""

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", **kwargs) -> None:
        super().__init__(**kwargs)
        check_real(type(self).__name__, "margin", margin, finite=False)
        if type_of_triplets not in TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets must be one of {TRIPLET_TYPES}, got {type_of_triplets!r}")
        self.margin = margin
        self.type_of_triplets = type_of_triplets
        self.add_to_recordable_attributes(
            list_of_names=["avg_triplet_margin", "pos_pair_dist", "neg_pair_dist"], is_stat=True
        )

    def mine(self, embeddings, labels, ref_emb, ref_labels, query_ref_index):
        a_T, p_T, n_T = all_triplets(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        ap_T = mat_BR[a_T, p_T]
        an_T = mat_BR[a_T, n_T]
        gap_T = self.distance.margin(an_T, ap_T)
        if self.collect_stats:
            self.set_stats({"pos_pair_dist": ap_T.mean().item(), "neg_pair_dist": an_T.mean().item(),
                            "avg_triplet_margin": gap_T.mean().item()})
        if self.type_of_triplets == "easy":
            keep_T = gap_T > self.margin
        else:
            keep_T = gap_T <= self.margin
            if self.type_of_triplets == "hard":
                keep_T &= gap_T <= 0
            elif self.type_of_triplets == "semihard":
                keep_T &= gap_T > 0
        return a_T[keep_T], p_T[keep_T], n_T[keep_T]

"""Batch-hard mining (Hermans et al. 2017): the farthest positive and the closest negative per anchor.

Legend: B query rows; the returned tensors have one entry per anchor that has both.
"""

from __future__ import annotations

from dmlscale.miners.batch_easy_hard import HARD, BatchEasyHardMiner


class BatchHardMiner(BatchEasyHardMiner):
    """BatchEasyHardMiner with hard positives and hard negatives, returned as triplets (a, p, n)."""

    def __init__(self, **kwargs) -> None:
        fixed = sorted(set(kwargs) & {"pos_strategy", "neg_strategy"})
        if fixed:
            raise ValueError(f"BatchHardMiner fixes both strategies to 'hard'; do not pass {fixed}")
        super().__init__(pos_strategy=HARD, neg_strategy=HARD, **kwargs)

    def mine(self, embeddings, labels, ref_emb, ref_labels, query_ref_index):
        a, p, _, n = super().mine(embeddings, labels, ref_emb, ref_labels, query_ref_index)
        return a, p, n

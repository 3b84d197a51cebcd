"""Contrastive loss: hinges on the positive and the negative pair values, each part reduced on its own.

Legend: B queries, R references, P positive pairs, N negative pairs; mat_BR the distance matrix.

From labels it has a streamed path (`tiled`, automatic at max(B, R) >= tiled_threshold): the P
positive pairs' values are computed directly and the B x R negatives are summed tile by tile as
(sum, count) under the reducer's filter (kernels/pairs.py); same value and gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.kernels.distance_tiles import normalised_pair, paired_values
from dmlscale.kernels.label_pairs import negative_counts, positive_pairs
from dmlscale.kernels.pairs import streamed_negative_hinge
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.losses.generic_pair_loss import GenericPairLoss, streams_from_labels
from dmlscale.losses.reducers import AvgNonZeroReducer, BaseReducer
from dmlscale.losses.streamed_totals import ReducesStreamedTotals, sub_reducer, term_filter, totals_entry


class ContrastiveLoss(TilingSwitch, ReducesStreamedTotals, GenericPairLoss):
    """L = [d_ap - m_pos]_+ over positive pairs, plus [m_neg - d_an]_+ over negative pairs
    (terms swapped for similarities); each part is reduced separately and the two are summed."""

    def __init__(self, pos_margin: float = 0, neg_margin: float = 1, *, tiled: bool | None = None,
                 tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        neg_reducer = sub_reducer(self.reducer, "neg_loss")
        if not streams_from_labels(self, embeddings, labels, indices_tuple, ref_emb, neg_reducer):
            return super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index)
        a_P, p_P = positive_pairs(labels, ref_labels, query_ref_index)
        num_neg = int(negative_counts(labels, ref_labels).sum())
        if len(a_P) <= 1 and num_neg <= 1:
            return self.zero_losses()
        q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
        pos_P = paired_values(self.distance, q_BD, r_RD, a_P, p_P)
        no_pairs = torch.zeros(0, dtype=torch.long, device=embeddings.device)
        neg_entry = {"losses": 0, "indices": (no_pairs, no_pairs), "reduction_type": "neg_pair"}
        if num_neg > 0:
            total, count = streamed_negative_hinge(self.distance, q_BD, r_RD, labels, ref_labels, query_ref_index,
                                                   neg_margin=self.neg_margin, keep_fn=term_filter(neg_reducer),
                                                   tile=self.tile_size)
            neg_entry = totals_entry(total, count, "neg_pair", neg_reducer)
        pos_loss = self.pair_loss(pos_P, pos_P[:0], (a_P, p_P, no_pairs, no_pairs), None)["pos_loss"]
        return {"pos_loss": pos_loss, "neg_loss": neg_entry}

    def get_default_reducer(self) -> BaseReducer:
        return AvgNonZeroReducer()

    def _sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]

    def pair_loss(self, pos_P: torch.Tensor, neg_N: torch.Tensor, pairs: tuple,
                  mat_BR: torch.Tensor | None) -> dict:
        pos_loss = F.relu(self.distance.margin(pos_P, self.pos_margin)) if len(pos_P) > 0 else 0
        neg_loss = F.relu(self.distance.margin(self.neg_margin, neg_N)) if len(neg_N) > 0 else 0
        return {
            "pos_loss": {"losses": pos_loss, "indices": pairs[:2], "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_loss, "indices": pairs[2:], "reduction_type": "neg_pair"},
        }

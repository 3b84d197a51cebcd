"""Supervised contrastive loss (SupCon), from the B x R matrix or streamed tile by tile.

Legend: B queries, R references; mat_BR the distance matrix, logits_BR = +-mat_BR / temperature
(negated for distances), pos_BR / neg_BR 0/1 masks of the positive / negative pairs, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import matches_and_diffs
from dmlscale.kernels.distance_tiles import normalised_pair, similarity_logits, similarity_tile_fn
from dmlscale.kernels.label_pairs import pair_counts
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.kernels.supcon import tiled_supcon_row_losses
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.losses.reducers import AvgNonZeroReducer, BaseReducer
from dmlscale.param_checks import check_positive


class SupConLoss(TilingSwitch, GenericPairLoss):
    """Supervised contrastive loss (Khosla et al. 2020): for each anchor row a with positives P(a)
    and negatives N(a), with l = logits,

        L_a = -1/|P(a)| sum_{p in P(a)} ( l_ap - log sum_{r in P(a) U N(a)} exp(l_ar) )

    (rows without positives give 0 and are dropped by the default AvgNonZeroReducer).
    `tiled`: None streams the matrix (kernels/supcon.py) when max(B, R) >= `tiled_threshold`, so a
    rank's few local rows against a large gathered batch stream too; True/False force either path.
    """

    uses_masks = True

    def __init__(self, temperature: float = 0.1, *, tiled: bool | None = None, tile_size: int = DEFAULT_TILE,
                 tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(type(self).__name__, "temperature", temperature)
        self.temperature = temperature
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def get_default_reducer(self) -> BaseReducer:
        return AvgNonZeroReducer()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if indices_tuple is not None:
            return super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index)
        # from labels, the masks come straight from label equality (no list of all B*R pairs)
        self.require_labels(labels, indices_tuple)
        if self.uses_tiles(max(len(embeddings), len(ref_emb))):
            return self.tiled_loss(embeddings, labels, ref_emb, ref_labels, query_ref_index)
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        if int(same_BR.sum()) <= 1 and int(diff_BR.sum()) <= 1:
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        return self.mask_loss(mat_BR, same_BR.to(mat_BR.dtype), diff_BR.to(mat_BR.dtype))

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        if not (bool(pos_BR.any()) and bool(neg_BR.any())):
            return self.zero_losses()
        logits_BR = similarity_logits(self.distance, mat_BR, self.temperature)
        logits_BR = logits_BR - logits_BR.amax(dim=1, keepdim=True).detach()
        lse_B = masked_logsumexp(logits_BR, (pos_BR + neg_BR) > 0, add_one=False)
        log_prob_BR = logits_BR - lse_B[:, None]
        num_pos_B = pos_BR.sum(dim=1)
        mean_log_prob_pos_B = (pos_BR * log_prob_BR).sum(dim=1) / (num_pos_B + torch.finfo(mat_BR.dtype).tiny)
        indices_B = torch.arange(len(mat_BR), device=mat_BR.device)
        return {"loss": {"losses": -mean_log_prob_pos_B, "indices": indices_B, "reduction_type": "element"}}

    def tiled_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
                   ref_labels: torch.Tensor, query_ref_index: torch.Tensor) -> dict:
        """The same per-row losses, streamed tile by tile (kernels/supcon.py): no B x R matrix."""
        num_pos, num_neg = pair_counts(labels, ref_labels, query_ref_index)
        if (num_pos <= 1 and num_neg <= 1) or num_pos == 0 or num_neg == 0:
            return self.zero_losses()
        query_BD, ref_RD = normalised_pair(self.distance, embeddings, ref_emb)
        self_index_B = torch.full_like(labels, -1) if query_ref_index is None else query_ref_index
        losses_B = tiled_supcon_row_losses(query_BD, ref_RD, labels, ref_labels, self_index_B,
                                           similarity_tile_fn(self.distance, self.temperature), self.tile_size)
        indices_B = torch.arange(len(embeddings), device=embeddings.device)
        return {"loss": {"losses": losses_B, "indices": indices_B, "reduction_type": "element"}}

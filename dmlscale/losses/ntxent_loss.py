"""NT-Xent (SimCLR's InfoNCE over labelled pairs), vectorised over the B x R matrix or streamed tile by tile.

Legend: B queries, R references, P positive pairs (a1_P, p_P), N negative pairs; mat_BR the distance
matrix, logits_BR = +-mat_BR / temperature (negated for distances), neg_count_BR how often each
(anchor, reference) pair is a negative, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import convert_to_pairs, matches_and_diffs
from dmlscale.kernels.distance_tiles import normalised_pair, similarity_logits, similarity_tile_fn
from dmlscale.kernels.label_pairs import pair_counts, positive_pairs
from dmlscale.kernels.ntxent import tiled_ntxent_pair_losses
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_positive


class NTXentLoss(TilingSwitch, GenericPairLoss):
    """NT-Xent: for each positive pair (a, p), with l = logits,

        L_ap = -log( exp(l_ap) / (exp(l_ap) + sum_{negative pairs (a, n)} exp(l_an)) + tiny )

    where the negatives are the negative pairs sharing the anchor a (counted with multiplicity when
    an indices_tuple repeats a pair) and tiny = finfo(dtype).tiny. Equal to PML's NTXentLoss in value
    and gradient, but the negative sums are taken once per anchor row from a B x R count matrix, so
    memory is O(B*R + P) instead of PML's O(P*N) = O(B^3) positive x negative tensor.

    `tiled`: None streams the matrix tile by tile (kernels/ntxent.py, memory O((B + R) D + P +
    tile_size^2)) when max(B, R) >= `tiled_threshold`; True/False force either path, same numbers.
    """

    def __init__(self, temperature: float = 0.07, *, tiled: bool | None = None, tile_size: int = DEFAULT_TILE,
                 tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(type(self).__name__, "temperature", temperature)
        self.temperature = temperature
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        if self.uses_tiles(max(len(embeddings), len(ref_emb))):
            return self.tiled_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index)
        if indices_tuple is None:
            # every pair from labels: positives as a short index list, negatives as the boolean mask
            # itself (never the B*R-long list of negative pairs)
            same_BR, neg_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
            a1_P, p_P = torch.where(same_BR)
            del same_BR
            num_neg = int(neg_BR.sum())
            if (len(a1_P) <= 1 and num_neg <= 1) or len(a1_P) == 0 or num_neg == 0:
                return self.zero_losses()
            neg_count_BR = None
        else:
            a1_P, p_P, a2_N, n_N = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
            if all(len(x) <= 1 for x in (a1_P, p_P, a2_N, n_N)) or len(a1_P) == 0 or len(a2_N) == 0:
                return self.zero_losses()
            neg_count_BR = torch.zeros(len(embeddings), len(ref_emb), dtype=embeddings.dtype, device=embeddings.device)
            neg_count_BR.index_put_((a2_N, n_N), torch.ones_like(a2_N, dtype=neg_count_BR.dtype), accumulate=True)
            neg_BR = neg_count_BR > 0
        logits_BR = similarity_logits(self.distance, self.distance(embeddings, ref_emb), self.temperature)
        losses_P = ntxent_pair_losses(logits_BR, a1_P, p_P, neg_BR, neg_count_BR)
        return {"loss": {"losses": losses_P, "indices": (a1_P, p_P), "reduction_type": "pos_pair"}}

    def tiled_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None,
                   ref_emb: torch.Tensor, ref_labels: torch.Tensor, query_ref_index: torch.Tensor) -> dict:
        """The same per-pair losses, streamed tile by tile: no B x R matrix (pairs listed by the tuple or,
        from labels, only the positive pairs)."""
        if indices_tuple is None:
            num_pos, num_neg = pair_counts(labels, ref_labels, query_ref_index)
            if (num_pos <= 1 and num_neg <= 1) or num_pos == 0 or num_neg == 0:
                return self.zero_losses()
            a1_P, p_P = positive_pairs(labels, ref_labels, query_ref_index)
            neg_spec = ("labels", labels, ref_labels)
        else:
            a1_P, p_P, a2_N, n_N = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
            if all(len(x) <= 1 for x in (a1_P, p_P, a2_N, n_N)) or len(a1_P) == 0 or len(a2_N) == 0:
                return self.zero_losses()
            neg_spec = ("pairs", a2_N, n_N)
        query_BD, ref_RD = normalised_pair(self.distance, embeddings, ref_emb)
        losses_P = tiled_ntxent_pair_losses(query_BD, ref_RD, a1_P, p_P, neg_spec,
                                            similarity_tile_fn(self.distance, self.temperature), self.tile_size)
        return {"loss": {"losses": losses_P, "indices": (a1_P, p_P), "reduction_type": "pos_pair"}}


def ntxent_pair_losses(logits_BR: torch.Tensor, a1_P: torch.Tensor, p_P: torch.Tensor, neg_BR: torch.Tensor,
                       neg_count_BR: torch.Tensor | None = None) -> torch.Tensor:
    """Per-positive-pair NT-Xent losses from the logits and the negatives of each anchor row.

    Each pair is shifted by m_ap = max(l_ap, max_n l_an) (detached) as PML does. The row sums are
    taken with the row shift m_a = max_n l_an and rescaled per pair:
    sum_n exp(l_an - m_ap) = exp(m_a - m_ap) * sum_n exp(l_an - m_a), with exp(m_a - m_ap) <= 1.
    """
    with torch.no_grad():
        row_max_B = logits_BR.masked_fill(~neg_BR, float("-inf")).amax(dim=1)  # -inf: anchor has no negatives
        row_shift_B = torch.where(torch.isfinite(row_max_B), row_max_B, torch.zeros_like(row_max_B))
    exp_BR = torch.exp((logits_BR - row_shift_B[:, None]).masked_fill(~neg_BR, float("-inf")))
    if neg_count_BR is not None:
        exp_BR = exp_BR * neg_count_BR
    neg_sum_B = exp_BR.sum(dim=1)
    del exp_BR
    pos_P = logits_BR[a1_P, p_P]
    with torch.no_grad():
        pair_shift_P = torch.maximum(pos_P, row_max_B[a1_P])
        rescale_P = torch.exp(row_max_B[a1_P] - pair_shift_P)  # 0 for anchors without negatives
    numerator_P = torch.exp(pos_P - pair_shift_P)
    denominator_P = numerator_P + neg_sum_B[a1_P] * rescale_P
    return -torch.log(numerator_P / denominator_P + torch.finfo(logits_BR.dtype).tiny)

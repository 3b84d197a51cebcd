"""Lifted structure loss: each positive pair against the negatives of both its ends.

Legend: B queries, R references, P positive pairs, N negative pairs, U distinct positive reference
rows; mat_BR the distance matrix, pos_P the positive pair values, neg_PN / neg_PR the negative
values each positive pair sees, keep_* the masks of the ones that count.

The negatives of a pair (a, p) are those of the anchor a and those of the positive p. From labels,
p's negatives are the references of another label, measured from reference row p (a U x R block of
the reference distance matrix), so the result depends only on the global batch and is exact under
DistributedLoss and CrossBatchMemory. With an indices_tuple they are the tuple's negative pairs
anchored on the query row holding p (`query_ref_index`), as in PML for a batch compared with itself;
under DistributedLoss with a miner, a positive held by another rank brings no negatives of its own (they
are in that rank's tuple), so only the labels path is exact there.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.indices import convert_to_pairs
from dmlscale.param_checks import check_real


class LiftedStructureLoss(BaseMetricLossFunction):
    """Lifted structure loss (Oh Song et al. 2016), one term per positive pair (a, p):

        L_ap = 1/2 [ log sum_{n in N_a U N_p} exp(m_neg - d_n) + (d_ap - m_pos) ]_+^2

    where N_a, N_p are the negatives of a and of p (similarities flip the signs via
    `distance.margin`). A pair without negatives keeps only its positive term. MeanReducer over the
    positive pairs by default.
    """

    def __init__(self, neg_margin: float = 1, pos_margin: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.neg_margin = check_real(owner, "neg_margin", neg_margin)
        self.pos_margin = check_real(owner, "pos_margin", pos_margin)
        self.add_to_recordable_attributes(list_of_names=["pos_margin", "neg_margin"], is_stat=False)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
        if all(len(x) <= 1 for x in (a1, p, a2, n)) or len(a1) == 0 or len(a2) == 0:
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        pos_P = mat_BR[a1, p]
        if indices_tuple is None:
            lse_P = self.negatives_from_labels(mat_BR, a1, p, labels, ref_labels, ref_emb)
        else:
            neg_N = mat_BR[a2, n]
            keep_PN = (a2[None, :] == a1[:, None]) | (query_ref_index[a2][None, :] == p[:, None])
            neg_PN = self.distance.margin(self.neg_margin, neg_N)[None, :].expand(len(a1), -1)
            lse_P = masked_logsumexp(neg_PN, keep_PN, add_one=False)
        losses_P = torch.relu(lse_P + self.distance.margin(pos_P, self.pos_margin)) ** 2 / 2
        return {"loss": {"losses": losses_P, "indices": (a1, p), "reduction_type": "pos_pair"}}

    def negatives_from_labels(self, mat_BR: torch.Tensor, a_P: torch.Tensor, p_P: torch.Tensor,
                              labels: torch.Tensor, ref_labels: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """log sum exp(m_neg - d) over the anchor's row of mat_BR and the positive's row of the
        reference matrix, each over the references of another label."""
        rows_U, inverse_P = torch.unique(p_P, return_inverse=True)
        ref_mat_UR = self.distance(ref_emb[rows_U], ref_emb)
        neg_from_a_PR = self.distance.margin(self.neg_margin, mat_BR[a_P])
        neg_from_p_PR = self.distance.margin(self.neg_margin, ref_mat_UR)[inverse_P]
        keep_a_PR = labels[a_P][:, None] != ref_labels[None, :]
        keep_p_PR = ref_labels[p_P][:, None] != ref_labels[None, :]
        return masked_logsumexp(torch.cat([neg_from_a_PR, neg_from_p_PR], dim=1),
                                torch.cat([keep_a_PR, keep_p_PR], dim=1), add_one=False)

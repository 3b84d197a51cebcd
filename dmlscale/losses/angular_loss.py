"""Angular loss: per positive pair, a soft maximum over the anchor's negatives of the angle at the
negative in the triangle (anchor, positive, negative).

Legend: B queries, R references, D embedding size, P positive pairs; a_PD / p_PD the normalised
anchors and positives, ref_RD the normalised references, logits_PR one term per (pair, reference),
neg_PR the mask of the references whose label differs from the pair's.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.distances import LpDistance
from dmlscale.indices import convert_to_pairs
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_real


class AngularLoss(BaseMetricLossFunction):
    """Angular loss (Wang et al. 2017) on L2-normalised embeddings, for a positive pair (a, p):

        L_ap = log(1 + sum_{n: y_n != y_a} exp(4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p))

    with alpha in degrees (stored in degrees; PML stores radians). Negatives are every reference of another label (also when an
    indices_tuple picks the positive pairs). Needs LpDistance(p=2, power=1, normalize_embeddings=True);
    MeanReducer over the positive pairs by default. Unlike PML, which normalises x_a and x_p but
    uses x_n as given, x_n is normalised too (the formula assumes unit vectors); on unit-norm
    inputs the two agree in value.
    """

    def __init__(self, alpha: float = 40, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, p=2, power=1, normalize_embeddings=True)
        self.alpha = check_real(type(self).__name__, "alpha", alpha, minimum=0, strict=True)  # degrees
        if self.alpha >= 90:
            raise ValueError(f"{type(self).__name__}: alpha must be an angle in degrees below 90, got {alpha!r}")
        self.add_to_recordable_attributes(list_of_names=["alpha"], is_stat=False)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple, allow_indices=False)
        a1, p, a2, _ = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
        if len(a1) == 0 or len(a2) == 0:
            return self.zero_losses()
        sq_tan = math.tan(math.radians(self.alpha)) ** 2
        a_PD = self.distance.normalize(embeddings[a1])
        p_PD = self.distance.normalize(ref_emb[p])
        ref_RD = self.distance.normalize(ref_emb)
        logits_PR = 4 * sq_tan * (a_PD + p_PD) @ ref_RD.T - 2 * (1 + sq_tan) * (a_PD * p_PD).sum(dim=1, keepdim=True)
        neg_PR = labels[a1][:, None] != ref_labels[None, :]
        losses_P = masked_logsumexp(logits_PR, neg_PR, add_one=True)
        return {"loss": {"losses": losses_P, "indices": (a1, p), "reduction_type": "pos_pair"}}

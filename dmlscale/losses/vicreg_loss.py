"""VICReg: invariance, variance and covariance terms for two views of the same samples.

Legend: B samples, D embedding size; z_BD / z2_BD the two views (embeddings and ref_emb, row i of
each the same sample), std_D per-dimension standard deviations, cov_DD covariance matrices.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive, check_real


class VICRegLoss(BaseMetricLossFunction):
    """VICReg (Bardes et al. 2022) for views Z = embeddings and Z' = ref_emb (Z itself when absent):

        L = invariance_lambda * mean_i ||z_i - z'_i||^2 / D
          + variance_mu * (mean_d [1 - sqrt(var_d(Z) + eps)]_+ / 2 + the same for Z')
          + covariance_v * (sum_{d != e} cov(Z)_de^2 / D + the same for Z')

    as four sub-losses (invariance_loss, variance_loss1, variance_loss2 per row / dimension, then
    MeanReducer; covariance_loss already reduced). No distance, labels or indices_tuple.

    ref_emb here is the second view, not a reference batch, and the variance and covariance are batch
    statistics: DistributedLoss refuses it, and recipes (which train labelled embeddings) do not offer it.
    """

    ref_emb_is_second_view = True
    takes_labels = False
    uses_batch_statistics = True

    def __init__(self, invariance_lambda: float = 25, variance_mu: float = 25, covariance_v: float = 1,
                 eps: float = 1e-4, **kwargs: Any) -> None:
        for refused in ("distance", "embedding_regularizer"):
            if refused in kwargs:
                raise ValueError(f"VICRegLoss takes no {refused}, got {refused}={kwargs[refused]!r}")
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.invariance_lambda = check_real(owner, "invariance_lambda", invariance_lambda)
        self.variance_mu = check_real(owner, "variance_mu", variance_mu)
        self.covariance_v = check_real(owner, "covariance_v", covariance_v)
        self.eps = check_positive(owner, "eps", eps)
        self.add_to_recordable_attributes(
            list_of_names=["invariance_lambda", "variance_mu", "covariance_v", "eps"], is_stat=False)

    def _sub_loss_names(self) -> list[str]:
        return ["invariance_loss", "variance_loss1", "variance_loss2", "covariance_loss"]

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if labels is not None or ref_labels is not None:
            raise ValueError("VICRegLoss takes no labels (its two views are embeddings and ref_emb)")
        if indices_tuple is not None:
            raise ValueError("VICRegLoss takes no indices_tuple")
        if ref_emb.shape != embeddings.shape:
            raise ValueError(f"VICRegLoss needs two views of the same samples: embeddings {tuple(embeddings.shape)} "
                             f"and ref_emb {tuple(ref_emb.shape)} differ")
        z_BD, z2_BD = embeddings, ref_emb
        invariance_B = self.invariance_lambda * torch.mean((z_BD - z2_BD) ** 2, dim=1)
        variance1_D = self.variance_mu * F.relu(1 - torch.sqrt(z_BD.var(dim=0) + self.eps)) / 2
        variance2_D = self.variance_mu * F.relu(1 - torch.sqrt(z2_BD.var(dim=0) + self.eps)) / 2
        covariance = self.covariance_v * (self.off_diagonal_power(z_BD) + self.off_diagonal_power(z2_BD))
        rows_B = torch.arange(len(z_BD), device=z_BD.device)
        dims_D = torch.arange(z_BD.shape[1], device=z_BD.device)
        return {
            "invariance_loss": {"losses": invariance_B, "indices": rows_B, "reduction_type": "element"},
            "variance_loss1": {"losses": variance1_D, "indices": dims_D, "reduction_type": "element"},
            "variance_loss2": {"losses": variance2_D, "indices": dims_D, "reduction_type": "element"},
            "covariance_loss": {"losses": covariance, "indices": None, "reduction_type": "already_reduced"},
        }

    @staticmethod
    def off_diagonal_power(z_BD: torch.Tensor) -> torch.Tensor:
        """sum of the squared off-diagonal covariances, divided by D."""
        num_rows, dim = z_BD.shape
        centred_BD = z_BD - z_BD.mean(dim=0)
        cov_DD = centred_BD.T @ centred_BD / (num_rows - 1)
        off_DD = ~torch.eye(dim, dtype=torch.bool, device=z_BD.device)
        return cov_DD[off_DD].pow(2).sum() / dim

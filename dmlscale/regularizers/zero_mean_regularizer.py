"""Zero-mean regularizer: pushes each row's entries to sum to zero.

Legend: N rows, D their size.
"""

from __future__ import annotations

import torch

from dmlscale.regularizers.base_regularizer import BaseRegularizer, element_losses


class ZeroMeanRegularizer(BaseRegularizer):
    """R = mean_i |sum_d r_id| (the mean by the default reducer)."""

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        return element_losses(torch.abs(rows_ND.sum(dim=1)))

"""Lp regularizer: the p-norm of each row, raised to a power.

Legend: N rows, D their size; norm_N the row norms.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.param_checks import check_positive
from dmlscale.regularizers.base_regularizer import BaseRegularizer, element_losses


class LpRegularizer(BaseRegularizer):
    """R = mean_i ||r_i||_p^power (p = 2, power = 1 by default; mean by the default reducer)."""

    def __init__(self, p: float = 2, power: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.p = check_positive(type(self).__name__, "p", p)
        self.power = check_positive(type(self).__name__, "power", power)
        self.add_to_recordable_attributes(list_of_names=["p", "power"], is_stat=False)

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        norm_N = torch.linalg.vector_norm(rows_ND, ord=self.p, dim=1)
        return element_losses(norm_N if self.power == 1 else norm_N**self.power)

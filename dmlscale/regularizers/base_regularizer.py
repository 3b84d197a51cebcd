"""The template of the regularizers (pytorch-metric-learning's `regularizers`): a module that maps a set of
rows (class weights, or embeddings) to one scalar, through a distance and a reducer like a loss.

Legend: N rows, D their size; rows_ND the input.
"""

from __future__ import annotations

import torch

from dmlscale.distances import ModuleWithDistance
from dmlscale.inputs import check_embeddings
from dmlscale.losses.reducers import BaseReducer, MeanReducer


class BaseRegularizer(ModuleWithDistance):
    """`forward(rows_ND)`: `compute_loss` gives a loss dict (sub-loss "loss"), the reducer (MeanReducer by
    default) makes it a scalar. Pass one as `weight_regularizer=` or `embedding_regularizer=` of a loss."""

    def __init__(self, distance: torch.nn.Module | None = None, reducer: BaseReducer | None = None,
                 collect_stats: bool | None = None) -> None:
        super().__init__(distance=distance, collect_stats=collect_stats)
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise ValueError(f"reducer must be a dmlscale reducer, got {type(reducer).__name__}")
        self.reducer = self.get_default_reducer() if reducer is None else reducer

    def get_default_reducer(self) -> BaseReducer:
        return MeanReducer()

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        raise NotImplementedError

    def forward(self, rows_ND: torch.Tensor) -> torch.Tensor:
        self.reset_stats()
        check_embeddings(f"{type(self).__name__} input", rows_ND)
        loss_dict = self.compute_loss(rows_ND)
        return self.reducer(loss_dict, rows_ND, torch.arange(len(rows_ND), device=rows_ND.device))


def element_losses(losses_N: torch.Tensor, **extra: torch.Tensor) -> dict:
    """The loss dict of one value per row (or per element of `losses_N`)."""
    indices_N = torch.arange(len(losses_N), device=losses_N.device)
    return {"loss": {"losses": losses_N, "indices": indices_N, "reduction_type": "element", **extra}}

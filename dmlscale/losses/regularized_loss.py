"""The embedding regularizer of pytorch-metric-learning's losses (`embedding_regularizer=`,
`embedding_reg_weight=`), for the losses that take it: the classification losses with class weights.

Legend: B queries, D embedding size; emb_BD the embeddings the loss was called with.

A regularizer is any module mapping a (N, D) tensor to a scalar (dmlscale.regularizers); its value times
its weight is an extra, already reduced sub-loss, `embedding_reg_loss`, that the loss's reducer adds.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_real


def regularization_term(owner: str, regularizer: torch.nn.Module, rows_ND: torch.Tensor, weight: float) -> dict:
    """The sub-loss entry of `weight * regularizer(rows_ND)`: one already reduced scalar."""
    value = regularizer(rows_ND)
    if not torch.is_tensor(value) or value.numel() != 1:
        raise ValueError(f"{owner}: a regularizer must return a scalar tensor, {type(regularizer).__name__} "
                         f"returned {value!r}")
    return {"losses": value * weight, "indices": None, "reduction_type": "already_reduced"}


def check_regularizer(owner: str, name: str, regularizer: object) -> None:
    if regularizer is not None and not isinstance(regularizer, torch.nn.Module):
        raise ValueError(f"{owner}: {name} must be None or a regularizer module (dmlscale.regularizers), "
                         f"got {regularizer!r}")


class RegularizedLoss(BaseMetricLossFunction):
    """A metric loss that adds `embedding_reg_weight * embedding_regularizer(embeddings)` as the sub-loss
    `embedding_reg_loss` (only when a regularizer is given), as every PML loss can.

    Subclasses list further regularization sub-losses in `regularization_loss_names`; the flags are set before
    the base constructor runs, because the reducer is chosen from the sub-loss names there.
    """

    def __init__(self, embedding_regularizer: torch.nn.Module | None = None, embedding_reg_weight: float = 1,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        check_regularizer(owner, "embedding_regularizer", embedding_regularizer)
        check_real(owner, "embedding_reg_weight", embedding_reg_weight)
        self.has_embedding_regularizer = embedding_regularizer is not None  # read by sub_loss_names below
        super().__init__(**kwargs)
        self.embedding_regularizer = embedding_regularizer
        self.embedding_reg_weight = embedding_reg_weight
        if embedding_regularizer is not None:
            self.add_to_recordable_attributes(list_of_names=["embedding_reg_weight"], is_stat=False)

    def regularization_loss_names(self) -> list[str]:
        return ["embedding_reg_loss"] if self.has_embedding_regularizer else []

    def sub_loss_names(self) -> list[str]:
        return ["loss", *self.regularization_loss_names()]

    def loss_dict(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        *,
        query_ref_index: torch.Tensor | None = None,
    ) -> dict:
        loss_dict = super().loss_dict(embeddings, labels, indices_tuple, ref_emb, ref_labels,
                                      query_ref_index=query_ref_index)
        if self.embedding_regularizer is not None:
            loss_dict["embedding_reg_loss"] = regularization_term(
                type(self).__name__, self.embedding_regularizer, embeddings, self.embedding_reg_weight)
        return loss_dict

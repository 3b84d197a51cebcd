"""Regularization sub-losses of pytorch-metric-learning's losses: `embedding_regularizer=` (every loss, see
base.py) and `weight_regularizer=` (losses with learned class weights or proxies).

Legend: N rows, D embedding size; rows_ND what the regularizer sees (embeddings, or class weights as rows).

A regularizer is any module mapping a (N, D) tensor to a scalar (dmlscale.regularizers); its value times its
weight is an extra, already reduced sub-loss (`embedding_reg_loss`, `weight_reg_loss`) that the loss's reducer
adds.
"""

from __future__ import annotations

import torch

EMBEDDING_REG_KEY = "embedding_reg_loss"


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

"""The shared base of the classification losses with a learned class weight matrix (pytorch-metric-learning's
margin-softmax family): ArcFace, CosFace, SphereFace, large-margin softmax, sub-center ArcFace, normalized
softmax.

Legend: B queries, C classes, K weight columns (C, or C x sub-centres), D embedding size; W_DK the class
weights (PML's `W`, embedding_size x columns), logits_BC one logit per (sample, class), *_B per sample.

    L_i = w_i * CE(logits(x_i), y_i)       w_i = how often row i appears in indices_tuple / the largest count (1 without)

Subclasses say how the logits are made (`training_logits`, with the margin; `get_logits`, without). `W` keeps
its dtype and device: it is cast inside the graph (PML casts `W.data` in place, which changes the parameter's
dtype under mixed precision). Classification needs no reference batch: `ref_emb` is refused, as in PML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.indices import anchor_weights
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.regularization import check_regularizer, regularization_term
from dmlscale.param_checks import check_positive_int, check_real


def check_class_inputs(owner: str, embeddings: torch.Tensor, labels: torch.Tensor | None, ref_emb: torch.Tensor,
                       ref_labels: torch.Tensor | None, *, num_classes: int, embedding_size: int) -> None:
    """ValueError unless labels are integer classes in [0, num_classes), the embedding size fits and no
    reference batch was given."""
    if ref_emb is not embeddings or ref_labels is not labels:
        raise ValueError(f"{owner} scores embeddings against its class weights; ref_emb/ref_labels are not "
                         "supported")
    if labels is None:
        raise ValueError(f"{owner} needs labels; got labels=None")
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(f"embeddings have shape {tuple(embeddings.shape)}, {owner} was built for embedding_size="
                         f"{embedding_size}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"label {int(labels[bad][0])} is outside [0, {num_classes}) ({int(bad.sum())} bad labels "
                         "in the batch)")


class ClassWeightLoss(BaseMetricLossFunction):
    """Cross-entropy over logits from a learned weight matrix `W` (embedding_size x columns), drawn by
    `weight_init_func` (default: standard normal, as PML). `weight_regularizer(W.t())` times
    `weight_reg_weight` is the sub-loss `weight_reg_loss` when a regularizer is given."""

    compares_to_reference = False  # terms involve the class weights only: nothing to gather or enqueue

    def __init__(self, num_classes: int, embedding_size: int, weight_regularizer: torch.nn.Module | None = None,
                 weight_reg_weight: float = 1, weight_init_func: Callable[[torch.Tensor], Any] | None = None,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "embedding_size", embedding_size)
        check_regularizer(owner, "weight_regularizer", weight_regularizer)
        check_real(owner, "weight_reg_weight", weight_reg_weight)
        if weight_init_func is not None and not callable(weight_init_func):
            raise ValueError(f"{owner}: weight_init_func must be None or a callable, got {weight_init_func!r}")
        self.has_weight_regularizer = weight_regularizer is not None  # read by sub_loss_names in the base
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = weight_reg_weight
        if weight_regularizer is not None:
            self.add_to_recordable_attributes(list_of_names=["weight_reg_weight"], is_stat=False)
        self.weight_init_func = torch.nn.init.normal_ if weight_init_func is None else weight_init_func
        self.W = torch.nn.Parameter(torch.empty(embedding_size, num_classes * self.columns_per_class()))
        with torch.no_grad():
            self.weight_init_func(self.W)

    def columns_per_class(self) -> int:
        """Weight columns per class (sub-center ArcFace has several)."""
        return 1

    def regularization_loss_names(self) -> list[str]:
        return (["weight_reg_loss"] if self.has_weight_regularizer else []) + super().regularization_loss_names()

    def class_weights(self, like: torch.Tensor) -> torch.Tensor:
        """W_DK in the dtype and on the device of `like`, cast inside the graph."""
        return self.W.to(dtype=like.dtype, device=like.device)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """logits_BC for inference (no margin), as PML's `get_logits`."""
        raise NotImplementedError

    def training_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits_BC the cross-entropy sees (with the margin on each sample's own class)."""
        return self.get_logits(embeddings)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        check_class_inputs(type(self).__name__, embeddings, labels, ref_emb, ref_labels,
                           num_classes=self.num_classes, embedding_size=self.embedding_size)
        weights_B = anchor_weights(indices_tuple, len(embeddings), embeddings.dtype, embeddings.device)
        logits_BC = self.training_logits(embeddings, labels)
        losses_B = F.cross_entropy(logits_BC, labels, reduction="none") * weights_B
        loss_dict = {"loss": {"losses": losses_B, "indices": torch.arange(len(embeddings), device=embeddings.device),
                              "reduction_type": "element"}}
        if self.weight_regularizer is not None:
            loss_dict["weight_reg_loss"] = regularization_term(
                type(self).__name__, self.weight_regularizer, self.class_weights(embeddings).t(),
                self.weight_reg_weight)
        return loss_dict

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"

"""Learned class proxies shared by ProxyAnchorLoss, ProxyNCALoss and SoftTripleLoss: their construction
(PML's shapes and initialisers, or the caller's `weight_init_func`), the class-label check, and their use
in the embeddings' dtype and device.

Legend: B queries, C classes; labels_B class indices into the proxies.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

WeightInit = Callable[[torch.Tensor], object]


def kaiming_normal_fan_out(weight: torch.Tensor) -> None:
    """ProxyAnchorLoss's default init (PML): Kaiming normal, fan_out mode."""
    torch.nn.init.kaiming_normal_(weight, mode="fan_out")


def kaiming_uniform_sqrt5(weight: torch.Tensor) -> None:
    """SoftTripleLoss's default init (PML): Kaiming uniform with a = sqrt(5), as torch.nn.Linear."""
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def standard_normal(weight: torch.Tensor) -> None:
    """The default init of PML's weight mixin (ProxyNCALoss): N(0, 1)."""
    torch.nn.init.normal_(weight)


def make_proxies(owner: str, shape: tuple[int, int], weight_init_func: WeightInit | None,
                 default: WeightInit) -> torch.nn.Parameter:
    """A float32 parameter of `shape` filled by `weight_init_func` (in place, as PML's init wrappers), or
    by `default` when it is None. The random draw is PML's: same shape, same initialiser, same RNG state."""
    if weight_init_func is not None and not callable(weight_init_func):
        raise ValueError(f"{owner}: weight_init_func must be a callable that fills a tensor in place, "
                         f"got {weight_init_func!r}")
    weight = torch.nn.Parameter(torch.empty(*shape))
    with torch.no_grad():
        (default if weight_init_func is None else weight_init_func)(weight)
    return weight


def check_class_labels(owner: str, labels: torch.Tensor, num_classes: int) -> None:
    """ValueError naming the first label outside [0, num_classes) (PML fails there with an index error)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be integer class indices, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"{owner}: label {int(labels[bad][0])} is outside [0, {num_classes}) "
                         f"({int(bad.sum())} bad labels in the batch); num_classes is {num_classes}")


def check_no_reference(owner: str, embeddings: torch.Tensor, ref_emb: torch.Tensor, why: str = "") -> None:
    """The proxies are the references: a ref_emb is refused (PML raises a ValueError too)."""
    if ref_emb is not embeddings:
        raise ValueError(f"{owner} compares embeddings with its learned proxies; ref_emb is not supported{why}")


def check_embedding_size(owner: str, embeddings: torch.Tensor, embedding_size: int) -> None:
    if embeddings.shape[1] != embedding_size:
        raise ValueError(f"{owner}: embeddings have size {embeddings.shape[1]}, the proxies were built for "
                         f"embedding_size={embedding_size}")


def check_proxy_batch(owner: str, embeddings: torch.Tensor, labels: torch.Tensor | None, ref_emb: torch.Tensor, *,
                      num_classes: int, embedding_size: int, why: str = "") -> None:
    """A proxy loss's input checks, in order: labels given, no reference batch, the embedding size, the classes."""
    if labels is None:
        raise ValueError(f"{owner} needs labels; got labels=None")
    check_no_reference(owner, embeddings, ref_emb, why)
    check_embedding_size(owner, embeddings, embedding_size)
    check_class_labels(owner, labels, num_classes)


def like_embeddings(weight: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The parameter in the embeddings' dtype and device, inside the graph (its gradient reaches the parameter,
    which keeps its own dtype and device; PML instead converts the parameter itself in place)."""
    return weight.to(dtype=embeddings.dtype, device=embeddings.device)


class ProxyRegularization:
    """PML's weight regularizer of the proxy losses: with `weight_regularizer` (any module mapping an N x D tensor
    of proxies to a scalar, such as PML's or dmlscale's regularizers), `weight_reg_weight * regularizer(proxies)`
    is the extra, already reduced sub-loss "weight_reg_loss". Mixed in before the loss base, whose constructor
    reads the sub-loss names (so the flag is set before it runs)."""

    def init_regularizer(self, owner: str, weight_regularizer: torch.nn.Module | None,
                         weight_reg_weight: float) -> None:
        if weight_regularizer is not None and not isinstance(weight_regularizer, torch.nn.Module):
            raise ValueError(f"{owner}: weight_regularizer must be None or a regularizer module, got "
                             f"{weight_regularizer!r}")
        if isinstance(weight_reg_weight, bool) or not isinstance(weight_reg_weight, (int, float)):
            raise ValueError(f"{owner}: weight_reg_weight must be a number, got {weight_reg_weight!r}")
        self.has_weight_regularizer = weight_regularizer is not None

    def set_regularizer(self, weight_regularizer: torch.nn.Module | None, weight_reg_weight: float) -> None:
        """After the base constructor (a module child can only be set on an initialised Module)."""
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = weight_reg_weight
        if weight_regularizer is not None:
            self.add_to_recordable_attributes(list_of_names=["weight_reg_weight"], is_stat=False)

    def regularization_loss_names(self) -> list[str]:
        """weight_reg_loss before the base's embedding_reg_loss, PML's order."""
        return (["weight_reg_loss"] if self.has_weight_regularizer else []) + super().regularization_loss_names()

    def add_weight_regularization(self, loss_dict: dict, rows_ND: torch.Tensor) -> dict:
        if self.weight_regularizer is not None:
            value = self.weight_regularizer(rows_ND)
            loss_dict["weight_reg_loss"] = {"losses": value * self.weight_reg_weight, "indices": None,
                                            "reduction_type": "already_reduced"}
        return loss_dict

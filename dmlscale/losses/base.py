"""Template for every metric loss: check inputs -> resolve ref_emb -> compute_loss -> reduce.

Signature and semantics follow pytorch-metric-learning:
`loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`, plus the
keyword-only `query_ref_index`: entry i is the reference row holding query row i itself (-1: none),
and self pairs (i, query_ref_index[i]) are never positives. Default: arange(B) without `ref_emb`
(the batch compared with itself), all -1 with it (PML). A distributed wrapper passes
`offset + arange(B)` against the gathered batch. Subclasses implement `compute_loss` and return a
loss dict (see `reducers.py`), and list their sub-losses in `_sub_loss_names` (PML's hook).

Every loss takes PML's `embedding_regularizer=` / `embedding_reg_weight=`: with a regularizer, the loss dict
gains the already reduced sub-loss `embedding_reg_loss` = weight * regularizer(embeddings) (the query rows,
not ref_emb, as PML), and `sub_loss_names()` lists it after the loss's own and its weight regularizer's.
"""

from __future__ import annotations

import copy

import torch

from dmlscale.distances import BaseDistance, ModuleWithDistance
from dmlscale.indices import check_indices_tuple
from dmlscale.inputs import resolve_inputs
from dmlscale.losses.reducers import BaseReducer, DoNothingReducer, MeanReducer, MultipleReducers
from dmlscale.losses.regularization import EMBEDDING_REG_KEY, check_regularizer, regularization_term
from dmlscale.param_checks import check_real


class BaseMetricLossFunction(ModuleWithDistance):
    """Base class of every dmlscale metric loss."""

    # False for losses whose terms involve no other sample (CenterLoss): nothing to gather or enqueue
    compares_to_reference = True
    # True for losses with statistics over all the pairs of a call (IntraPairVarianceLoss's means): they are
    # not a sum over query rows, so DistributedLoss, which splits the rows across ranks, refuses them
    uses_batch_statistics = False

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool | None = None,
        embedding_regularizer: torch.nn.Module | None = None,
        embedding_reg_weight: float = 1,
    ) -> None:
        owner = type(self).__name__
        check_regularizer(owner, "embedding_regularizer", embedding_regularizer)
        check_real(owner, "embedding_reg_weight", embedding_reg_weight)
        super().__init__(distance=distance, collect_stats=collect_stats)
        self.embedding_regularizer = embedding_regularizer  # read by sub_loss_names in set_reducer below
        self.embedding_reg_weight = embedding_reg_weight
        if embedding_regularizer is not None:
            self.add_to_recordable_attributes(list_of_names=["embedding_reg_weight"], is_stat=False)
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise ValueError(f"reducer must be a dmlscale reducer, got {type(reducer).__name__}")
        self.set_reducer(reducer)

    # -- configuration ---------------------------------------------------------------------------
    def get_default_reducer(self) -> BaseReducer:
        return MeanReducer()

    def _sub_loss_names(self) -> list[str]:
        """The loss's own sub-losses (PML's hook); regularization sub-losses are added by `sub_loss_names`."""
        return ["loss"]

    def regularization_loss_names(self) -> list[str]:
        """Regularization sub-losses in PML's order; a weight-regularized subclass puts its own first."""
        return [EMBEDDING_REG_KEY] if self.embedding_regularizer is not None else []

    def sub_loss_names(self) -> list[str]:
        return [*self._sub_loss_names(), *self.regularization_loss_names()]

    def set_reducer(self, reducer: BaseReducer | None) -> None:
        if isinstance(reducer, (MultipleReducers, DoNothingReducer)):
            self.reducer = reducer
            return
        names = self.sub_loss_names()
        per_name = {k: self.get_default_reducer() if reducer is None else copy.deepcopy(reducer) for k in names}
        self.reducer = per_name[names[0]] if len(names) == 1 else MultipleReducers(per_name)

    # -- the template ----------------------------------------------------------------------------
    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        *,
        query_ref_index: torch.Tensor | None = None,
    ) -> torch.Tensor | dict:
        loss_dict = self.loss_dict(embeddings, labels, indices_tuple, ref_emb, ref_labels,
                                   query_ref_index=query_ref_index)
        return self.reducer(loss_dict, embeddings, labels)

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
        """The unreduced loss dictionary (validated inputs -> compute_loss); `forward` reduces it.
        Distributed wrappers call this and reduce across ranks instead."""
        self.reset_stats()
        embeddings, labels, ref_emb, ref_labels, query_ref_index = resolve_inputs(
            embeddings, labels, ref_emb, ref_labels, query_ref_index, check_shapes=self.distance.check_shapes
        )
        check_indices_tuple(indices_tuple, len(embeddings), len(ref_emb))
        loss_dict = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index)
        return self.add_embedding_regularization(loss_dict, embeddings)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------
    def embedding_regularization_loss(self, embeddings: torch.Tensor) -> dict:
        """The `embedding_reg_loss` entry for these rows (the regularizer must be set)."""
        return regularization_term(type(self).__name__, self.embedding_regularizer, embeddings,
                                   self.embedding_reg_weight)

    def add_embedding_regularization(self, loss_dict: dict, embeddings: torch.Tensor) -> dict:
        if self.embedding_regularizer is not None:
            loss_dict[EMBEDDING_REG_KEY] = self.embedding_regularization_loss(embeddings)
        return loss_dict

    def zero_losses(self) -> dict:
        return {name: {"losses": 0, "indices": None, "reduction_type": "already_reduced"} for name in self.sub_loss_names()}

    def refuse_indices_tuple(self, indices_tuple: tuple | None, why: str = "PML refuses it too") -> None:
        """ValueError when a loss that mines nothing from a tuple is given one."""
        if indices_tuple is not None:
            raise ValueError(f"{type(self).__name__} does not take an indices_tuple ({why})")

    def require_labels(self, labels: torch.Tensor | None, indices_tuple: tuple | None = None, *,
                       allow_indices: bool = True) -> None:
        if labels is None and (indices_tuple is None or not allow_indices):
            needed = "labels or indices_tuple" if allow_indices else "labels"
            raise ValueError(f"{type(self).__name__} needs {needed}; got labels=None")

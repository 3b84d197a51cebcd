"""Template for every metric loss: check inputs -> resolve ref_emb -> compute_loss -> reduce.

Signature and semantics follow pytorch-metric-learning:
`loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`.
Without `ref_emb` the batch is compared with itself (self pairs excluded); with it, queries are
compared with the reference batch only. Subclasses implement `compute_loss` and return a loss dict
(see `reducers.py`).
"""

from __future__ import annotations

import copy

import torch

from dmlscale.distances import BaseDistance, LpDistance, check_embeddings
from dmlscale.indices import check_indices_tuple, check_labels
from dmlscale.losses.reducers import BaseReducer, DoNothingReducer, MeanReducer, MultipleReducers
from dmlscale.records import ModuleWithRecords


class ModuleWithDistance(ModuleWithRecords):
    """Holds a distance (a default one per subclass) and checks the type a subclass requires."""

    def __init__(self, distance: BaseDistance | None = None, collect_stats: bool = False) -> None:
        super().__init__(collect_stats=collect_stats)
        if distance is not None and not isinstance(distance, BaseDistance):
            raise ValueError(f"distance must be a dmlscale.distances.BaseDistance, got {type(distance).__name__}")
        self.distance = self.get_default_distance() if distance is None else distance

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(p=2)

    def require_distance(self, allowed: type | tuple[type, ...], **settings) -> None:
        """Raise a ValueError naming the distance when it is not of the allowed type/settings."""
        allowed_types = allowed if isinstance(allowed, tuple) else (allowed,)
        names = " or ".join(t.__name__ for t in allowed_types)
        if not isinstance(self.distance, allowed_types):
            raise ValueError(f"{type(self).__name__} requires distance {names}, got {type(self.distance).__name__}")
        for key, value in settings.items():
            if getattr(self.distance, key) != value:
                raise ValueError(
                    f"{type(self).__name__} requires {names}({key}={value!r}), got {key}={getattr(self.distance, key)!r}"
                )


class BaseMetricLossFunction(ModuleWithDistance):
    """Base class of every dmlscale metric loss."""

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(distance=distance, collect_stats=collect_stats)
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise ValueError(f"reducer must be a dmlscale reducer, got {type(reducer).__name__}")
        self.set_reducer(reducer)

    # -- configuration ---------------------------------------------------------------------------
    def get_default_reducer(self) -> BaseReducer:
        return MeanReducer()

    def sub_loss_names(self) -> list[str]:
        return ["loss"]

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
    ):
        self.reset_stats()
        embeddings, labels, ref_emb, ref_labels = resolve_inputs(embeddings, labels, ref_emb, ref_labels)
        check_indices_tuple(indices_tuple, len(embeddings), len(ref_emb))
        loss_dict = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return self.reducer(loss_dict, embeddings, labels)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------
    def zero_losses(self) -> dict:
        return {name: {"losses": 0, "indices": None, "reduction_type": "already_reduced"} for name in self.sub_loss_names()}

    def require_labels(self, labels, indices_tuple=None, *, allow_indices: bool = True) -> None:
        if labels is None and (indices_tuple is None or not allow_indices):
            needed = "labels or indices_tuple" if allow_indices else "labels"
            raise ValueError(f"{type(self).__name__} needs {needed}; got labels=None")


def resolve_inputs(embeddings, labels, ref_emb, ref_labels):
    """Validate shapes and default the reference batch to the query batch (same objects, so
    `ref_labels is labels` tells the self-comparison case)."""
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, len(embeddings))
    if labels is not None:
        labels = labels.to(embeddings.device)
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb")
        return embeddings, labels, embeddings, labels
    check_embeddings("ref_emb", ref_emb)
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(f"embeddings have size {embeddings.shape[1]} but ref_emb has size {ref_emb.shape[1]}")
    check_labels("ref_labels", ref_labels, len(ref_emb))
    if labels is not None and ref_labels is None:
        raise ValueError("labels were given with ref_emb but ref_labels is None; pass ref_labels too")
    if ref_labels is not None:
        ref_labels = ref_labels.to(ref_emb.device)
    return embeddings, labels, ref_emb, ref_labels

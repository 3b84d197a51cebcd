"""Reducers turn a loss dictionary into a scalar (PML-compatible).

A loss returns `{name: {"losses": tensor or 0, "indices": ..., "reduction_type": ...}}` where
reduction_type is one of "already_reduced", "element", "pos_pair", "neg_pair", "triplet". A
reducer sees one entry; `MultipleReducers` sums the reductions of several sub-losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dmlscale.records import ModuleWithRecords

REDUCTION_TYPES = ("already_reduced", "element", "pos_pair", "neg_pair", "triplet")


def zero_loss_like(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph, so backward() works when nothing was mined."""
    return torch.sum(embeddings * 0)


class BaseReducer(ModuleWithRecords):
    """Reduce one sub-loss; subclasses implement `element_reduction` (pairs and triplets follow it)."""

    def __init__(self, collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        self.add_to_recordable_attributes(name="losses_size", is_stat=True)

    def forward(self, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.reset_stats()
        if len(loss_dict) != 1:
            raise ValueError(
                f"{type(self).__name__} reduces one sub-loss, got {sorted(loss_dict)}; "
                "wrap it in MultipleReducers"
            )
        (loss_info,) = loss_dict.values()
        return self.reduce_the_loss(loss_info, embeddings, labels)

    def reduce_the_loss(self, loss_info: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        losses, indices, reduction_type = loss_info["losses"], loss_info["indices"], loss_info["reduction_type"]
        if reduction_type not in REDUCTION_TYPES:
            raise ValueError(f"unknown reduction_type {reduction_type!r}; allowed: {REDUCTION_TYPES}")
        if self.collect_stats:
            self.losses_size = 1 if (not torch.is_tensor(losses) or losses.ndim == 0) else len(losses)
        if not torch.is_tensor(losses) and losses == 0:
            return zero_loss_like(embeddings)
        if reduction_type == "already_reduced":
            assert losses.ndim == 0 or len(losses) == 1
            return losses
        return getattr(self, f"{reduction_type}_reduction")(losses, indices, embeddings, labels)

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def pos_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.element_reduction(losses, indices, embeddings, labels)

    def neg_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.element_reduction(losses, indices, embeddings, labels)

    def triplet_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return self.element_reduction(losses, indices, embeddings, labels)


class MeanReducer(BaseReducer):
    """Mean over all elements (NaN-free: an empty set reduces to a connected zero)."""

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return torch.mean(losses)


class SumReducer(BaseReducer):
    """Sum over all elements."""

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return torch.sum(losses)


class ThresholdReducer(BaseReducer):
    """Mean over the elements with low < loss < high (either bound optional)."""

    def __init__(self, low: float | None = None, high: float | None = None, collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        if low is None and high is None:
            raise ValueError("ThresholdReducer needs at least one of low or high")
        self.low, self.high = low, high
        self.add_to_recordable_attributes(
            list_of_names=["num_past_filter", "num_above_low", "num_below_high"], is_stat=True
        )

    def keep_mask(self, losses: torch.Tensor) -> torch.Tensor:
        """The elements that pass: low < loss < high (missing bounds ignored)."""
        keep = torch.ones_like(losses, dtype=torch.bool)
        if self.low is not None:
            keep &= losses > self.low
        if self.high is not None:
            keep &= losses < self.high
        return keep

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        keep = self.keep_mask(losses)
        kept = losses[keep]
        if self.collect_stats:
            self.num_past_filter = len(kept)
            if self.low is not None:
                self.num_above_low = int((losses > self.low).sum())
            if self.high is not None:
                self.num_below_high = int((losses < self.high).sum())
        return torch.mean(kept) if len(kept) >= 1 else zero_loss_like(embeddings)


class AvgNonZeroReducer(ThresholdReducer):
    """Mean over the strictly positive losses: the usual choice for hinge losses."""

    def __init__(self, collect_stats: bool | None = None) -> None:
        super().__init__(low=0, collect_stats=collect_stats)


class DoNothingReducer(BaseReducer):
    """Return the loss dictionary unchanged (per-element losses, for custom weighting)."""

    def forward(self, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> dict:
        return loss_dict


class MultipleReducers(BaseReducer):
    """One reducer per sub-loss name (default reducer for the others); the results are summed."""

    def __init__(self, reducers: dict[str, BaseReducer], default_reducer: BaseReducer | None = None,
                 collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        self.reducers = torch.nn.ModuleDict(reducers)
        self.default_reducer = MeanReducer() if default_reducer is None else default_reducer

    def forward(self, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.reset_stats()
        sub_losses = [
            (self.reducers[name] if name in self.reducers else self.default_reducer)({name: info}, embeddings, labels)
            for name, info in loss_dict.items()
        ]
        return torch.stack(sub_losses).sum()


class ClassWeightedReducer(BaseReducer):
    """Mean of losses scaled by the weight of a class: mean_i w[y_i] * loss_i.

    The class is the element's label (element losses) or the anchor's label (pairs, triplets: the first
    index array). `weights` holds one weight per class label (a tensor or a list).
    """

    def __init__(self, weights: torch.Tensor | list[float], collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        weights = torch.as_tensor(weights)
        if weights.ndim != 1 or not (weights.is_floating_point() or weights.dtype in (torch.int32, torch.int64)):
            raise ValueError(
                f"ClassWeightedReducer: weights must be a 1-D tensor of numbers (one per class), got {weights!r}"
            )
        self.weights = weights

    def weighted_mean(self, losses: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.mean(self.weighted(losses, rows, labels))

    def weighted(self, losses: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Each term times the weight of its row's class."""
        if labels is None:
            raise ValueError("ClassWeightedReducer needs labels to weigh the losses by class; got labels=None")
        label_of_row = labels[rows]
        if len(label_of_row) > 0 and int(label_of_row.max()) >= len(self.weights):
            raise ValueError(
                f"ClassWeightedReducer has {len(self.weights)} weights but sees label {int(label_of_row.max())}"
            )
        self.weights = self.weights.to(device=losses.device, dtype=losses.dtype)
        return losses * self.weights[label_of_row]

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return self.weighted_mean(losses, indices, labels)

    def pos_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.weighted_mean(losses, indices[0], labels)

    def neg_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.weighted_mean(losses, indices[0], labels)

    def triplet_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return self.weighted_mean(losses, indices[0], labels)


class DivisorReducer(BaseReducer):
    """sum(losses) / divisor, with the divisor given by the loss in its entry (`"divisor"`): the reducer of
    PML's MarginLoss and ProxyAnchorLoss. A divisor of 0 gives a connected zero. `self.divisor` holds the last
    divisor (set on every call, as PML does)."""

    def __init__(self, collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        self.add_to_recordable_attributes(name="divisor", is_stat=True)

    def reduce_the_loss(self, loss_info: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if loss_info["reduction_type"] != "already_reduced":
            if "divisor" not in loss_info:
                raise ValueError(
                    f"DivisorReducer needs a 'divisor' in the loss entry, got keys {sorted(loss_info)}; "
                    "only losses that report one (PML's MarginLoss, ProxyAnchorLoss) can use it"
                )
            self.divisor = loss_info["divisor"]
        return super().reduce_the_loss(loss_info, embeddings, labels)

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        if self.divisor == 0:
            return zero_loss_like(embeddings)
        reduced = torch.sum(losses) / self.divisor
        if losses.dtype == torch.float16 and torch.isnan(reduced):  # float16 overflow: sum in float32
            reduced = (torch.sum(losses.float()) / self.divisor).half()
        return reduced


def mean_per_row(values_BC: torch.Tensor, num_per_row_B: torch.Tensor) -> torch.Tensor:
    """PerAnchorReducer's default aggregation: the row sums over the row counts, 0 for an empty row."""
    mean_B = values_BC.sum(dim=1) / num_per_row_B
    return mean_B.masked_fill(num_per_row_B == 0, 0)


class PerAnchorReducer(BaseReducer):
    """Pair losses first aggregated per anchor (default: the mean of its pairs, 0 for an anchor without
    pairs), then reduced over the B anchors by `reducer` (default MeanReducer) as element losses.

    Legend: B anchors (query rows), C columns (reference rows), values_BC the pair losses by position.
    `aggregation_func(values_BC, num_per_row_B)` sees zeros where an anchor has no pair. Element losses go
    to `reducer` unchanged; triplet losses are not supported (as in PML).
    """

    def __init__(self, reducer: BaseReducer | None = None,
                 aggregation_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_per_row,
                 collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise ValueError(f"PerAnchorReducer: reducer must be a dmlscale reducer, got {type(reducer).__name__}")
        self.reducer = MeanReducer() if reducer is None else reducer
        self.aggregation_func = aggregation_func

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        return self.reducer({"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}},
                            embeddings, labels)

    def per_anchor(self, losses: torch.Tensor, indices: Any, num_anchors: int) -> dict:
        """The element entry of the aggregated pair losses: one value per anchor row 0..num_anchors-1."""
        anchors, others = indices
        num_columns = max(num_anchors, int(others.max()) + 1 if len(others) else 0)
        values_BC = torch.zeros(num_anchors, num_columns, dtype=losses.dtype, device=losses.device)
        values_BC = values_BC.index_put((anchors, others), losses)
        has_BC = torch.zeros(num_anchors, num_columns, dtype=torch.bool, device=losses.device)
        has_BC[anchors, others] = True
        per_anchor_B = self.aggregation_func(values_BC, has_BC.sum(dim=1))
        rows_B = torch.arange(num_anchors, device=losses.device)
        return {"losses": per_anchor_B, "indices": rows_B, "reduction_type": "element"}

    def pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                       labels: torch.Tensor | None) -> torch.Tensor:
        return self.reducer({"loss": self.per_anchor(losses, indices, len(embeddings))}, embeddings, labels)

    def pos_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.pair_reduction(losses, indices, embeddings, labels)

    def neg_pair_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                           labels: torch.Tensor | None) -> torch.Tensor:
        return self.pair_reduction(losses, indices, embeddings, labels)

    def triplet_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        raise ValueError("PerAnchorReducer reduces element and pair losses; it does not support triplet losses")

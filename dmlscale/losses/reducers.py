"""Reducers turn a loss dictionary into a scalar (PML-compatible).

A loss returns `{name: {"losses": tensor or 0, "indices": ..., "reduction_type": ...}}` where
reduction_type is one of "already_reduced", "element", "pos_pair", "neg_pair", "triplet". A
reducer sees one entry; `MultipleReducers` sums the reductions of several sub-losses.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.records import ModuleWithRecords

REDUCTION_TYPES = ("already_reduced", "element", "pos_pair", "neg_pair", "triplet")


def zero_loss_like(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph, so backward() works when nothing was mined."""
    return torch.sum(embeddings * 0)


class BaseReducer(ModuleWithRecords):
    """Reduce one sub-loss; subclasses implement `element_reduction` (pairs and triplets follow it)."""

    def __init__(self, collect_stats: bool = False) -> None:
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

    def __init__(self, low: float | None = None, high: float | None = None, collect_stats: bool = False) -> None:
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

    def __init__(self, collect_stats: bool = False) -> None:
        super().__init__(low=0, collect_stats=collect_stats)


class DivisorReducer(BaseReducer):
    """Sum of the elements divided by the `divisor` the loss puts in its entry (MarginLoss: the number
    of active hinge terms); a zero divisor gives a connected zero."""

    def __init__(self, collect_stats: bool = False) -> None:
        super().__init__(collect_stats=collect_stats)
        self.add_to_recordable_attributes(name="divisor", is_stat=True)

    def reduce_the_loss(self, loss_info: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        losses, reduction_type = loss_info["losses"], loss_info["reduction_type"]
        if reduction_type == "already_reduced" or (not torch.is_tensor(losses) and losses == 0):
            return super().reduce_the_loss(loss_info, embeddings, labels)
        if "divisor" not in loss_info:
            raise ValueError(f"DivisorReducer needs a 'divisor' in the loss entry; got keys {sorted(loss_info)}")
        self.divisor = loss_info["divisor"]
        return super().reduce_the_loss(loss_info, embeddings, labels)

    def element_reduction(self, losses: torch.Tensor, indices: Any, embeddings: torch.Tensor,
                          labels: torch.Tensor | None) -> torch.Tensor:
        if self.divisor == 0:
            return zero_loss_like(embeddings)
        return torch.sum(losses) / self.divisor


class DoNothingReducer(BaseReducer):
    """Return the loss dictionary unchanged (per-element losses, for custom weighting)."""

    def forward(self, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> dict:
        return loss_dict


class MultipleReducers(BaseReducer):
    """One reducer per sub-loss name (default reducer for the others); the results are summed."""

    def __init__(self, reducers: dict[str, BaseReducer], default_reducer: BaseReducer | None = None,
                 collect_stats: bool = False) -> None:
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

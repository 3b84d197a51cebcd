"""A streamed sub-loss as (sum, count): a loss over B x R (or more) terms reduced without listing them.

A streamed kernel applies the reducer's own filter to every term as it goes (`term_filter`) and
returns the sum of the kept terms and how many there are. For the reducer the entry is written as
its mean repeated `count` times, `(sum / count).expand(count)`: a stride-0 view (no memory) whose
mean, sum and filtered mean are exactly those of the kept terms, so any Mean, Sum, AvgNonZero or
Threshold reducer, and `DistributedLoss`'s global reduction (which adds sums and counts over
ranks), give the materialised value and gradient. The mean of terms inside (low, high) lies inside
(low, high), so a threshold filter keeps every repeated element. `reduce_with_totals` reduces such
entries straight from (sum, count); only reducers that see the view itself (DistributedLoss with a
threshold reducer) build a transient mask of `count` booleans.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.losses.reducers import (
    BaseReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    ThresholdReducer,
    zero_loss_like,
)

TOTAL_KEY = "streamed_total"


def supports_totals(reducer: BaseReducer) -> bool:
    """Whether a streamed (sum, count) entry reduces exactly under `reducer`."""
    return isinstance(reducer, (SumReducer, ThresholdReducer)) or type(reducer) is MeanReducer


def term_filter(reducer: BaseReducer) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-term keep rule the streamed kernel must apply: the threshold's mask, else none."""
    return reducer.keep_mask if isinstance(reducer, ThresholdReducer) else None


def totals_entry(total: torch.Tensor, count: int, reduction_type: str, reducer: BaseReducer) -> dict:
    """A loss-dict entry for the kept terms' `total` and `count` (see the module docstring)."""
    if count == 0:
        return {"losses": 0, "indices": None, "reduction_type": "already_reduced"}
    if isinstance(reducer, SumReducer):
        losses = total.reshape(1)
    else:
        losses = (total / count).reshape(1).expand(count)
    return {"losses": losses, "indices": None, "reduction_type": reduction_type, TOTAL_KEY: (total, count)}


def sub_reducer(reducer: BaseReducer, name: str) -> BaseReducer:
    """The reducer that will reduce sub-loss `name`."""
    if isinstance(reducer, MultipleReducers):
        return reducer.reducers[name] if name in reducer.reducers else reducer.default_reducer
    return reducer


def reduce_with_totals(reducer: BaseReducer, loss_dict: dict, embeddings: torch.Tensor,
                       labels: torch.Tensor | None) -> torch.Tensor | dict:
    """`reducer(loss_dict, ...)`, but streamed entries reduce from their (sum, count) directly."""
    if isinstance(reducer, DoNothingReducer) or not any(TOTAL_KEY in info for info in loss_dict.values()):
        return reducer(loss_dict, embeddings, labels)
    parts = []
    for name, info in loss_dict.items():
        if TOTAL_KEY in info:
            total, count = info[TOTAL_KEY]
            parts.append(total if isinstance(sub_reducer(reducer, name), SumReducer) else total / count)
        else:
            parts.append(sub_reducer(reducer, name)({name: info}, embeddings, labels))
    return torch.stack([p + zero_loss_like(embeddings) for p in parts]).sum()


class ReducesStreamedTotals:
    """Mixin for a metric loss whose loss dict may hold streamed entries: `forward` reduces them from
    (sum, count) (`reduce_with_totals`) instead of through their repeated-mean view."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None, *,
                query_ref_index: torch.Tensor | None = None) -> torch.Tensor | dict:
        loss_dict = self.loss_dict(embeddings, labels, indices_tuple, ref_emb, ref_labels,
                                   query_ref_index=query_ref_index)
        return reduce_with_totals(self.reducer, loss_dict, embeddings, labels)

"""DistributedLoss / DistributedMiner: every rank's loss sees the global batch, exactly.

Legend: n local rows, N global rows, W world size, S_r rank r's sum of loss elements, C the global
number of elements that the reducer averages over.

Each rank gathers all embeddings (gradient-exact, `all_gather_with_grad`) and labels, then computes
only the rows of its *local* queries against the *global* references; query row i is global row
offset_r + i, which the pure loss receives as `query_ref_index` so self pairs are dropped exactly as in
one process. Mining runs on the same local-rows x global-columns matrix. The reducer is applied
globally: element sums and counts travel in one all_reduce, so Mean, Sum, AvgNonZero, Threshold,
ClassWeighted and PerAnchor (of those) reducers give the single-process value; so does DivisorReducer
(MarginLoss), whose per-rank divisors are summed like counts.

What the returned tensor means: its *value* is the global loss, the same on every rank and equal to
one process running the loss on the concatenated batch (not multiplied by W). Its *gradient* is W
times this rank's share (W * S_r / C); the all_gather backward sums shares across ranks and the
data-parallel average (DDP, DeepSpeed) divides by W, so parameter gradients equal the single-process
gradient. Without a data-parallel wrapper, divide the gradients by W yourself.

A loss's `embedding_reg_loss` (PML's embedding_regularizer) is not a sum over rows that ranks could split
(ZeroMeanRegularizer sums the batch first): every rank evaluates the regularizer on the gathered global
batch (`all_gather_with_grad`). Its value is then the single-process one, and since every rank's graph
holds the whole term, the gather's backward gives each row W times its single-process gradient: the
convention above.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dmlscale.distributed.collectives import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum_no_grad,
    gather_sizes,
    global_offsets,
    world_rank_and_size,
)
from dmlscale.indices import tuple_to_reference_rows
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.regularization import EMBEDDING_REG_KEY
from dmlscale.losses.streamed_totals import TOTAL_KEY, supports_totals
from dmlscale.losses.reducers import (
    BaseReducer,
    ClassWeightedReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)


def _element_sum_and_count(reducer: BaseReducer, loss_info: dict, embeddings: torch.Tensor, world_size: int,
                           labels: torch.Tensor | None = None) -> tuple[torch.Tensor, int | float | None]:
    """This rank's (sum of kept elements, number of kept elements or None for a plain sum).

    ClassWeightedReducer adds w[class] x term over the local rows (classes from the local labels);
    PerAnchorReducer aggregates the local anchors' pairs, then hands one term per anchor to its reducer.
    """
    losses, reduction_type = loss_info["losses"], loss_info["reduction_type"]
    if isinstance(reducer, PerAnchorReducer) and torch.is_tensor(losses) and reduction_type != "already_reduced":
        if reduction_type == "triplet":
            raise ValueError("PerAnchorReducer reduces element and pair losses; it does not support triplet losses")
        if reduction_type in ("pos_pair", "neg_pair"):
            loss_info = reducer.per_anchor(losses, loss_info["indices"], len(embeddings))
        return _element_sum_and_count(reducer.reducer, loss_info, embeddings, world_size, labels)
    if not torch.is_tensor(losses) and losses == 0:
        zero = torch.sum(embeddings * 0)
        return zero, (None if isinstance(reducer, SumReducer) else 0)
    if reduction_type == "already_reduced":
        if world_size == 1:  # one process: the value is the loss, added like a plain sum
            return losses.reshape(()), None
        raise ValueError("a loss that returns an already reduced value cannot be reduced across ranks exactly")
    if TOTAL_KEY in loss_info and supports_totals(reducer):  # streamed (sum, count): no per-term mask
        total, count = loss_info[TOTAL_KEY]
        return total + torch.sum(embeddings * 0), (None if isinstance(reducer, SumReducer) else count)
    losses = losses.reshape(-1)
    if isinstance(reducer, DivisorReducer):  # the loss's own divisor is this rank's share of the global one
        return losses.sum(), float(loss_info["divisor"])
    if isinstance(reducer, SumReducer):
        return losses.sum(), None
    if isinstance(reducer, ThresholdReducer):
        keep = reducer.keep_mask(losses)
        return losses[keep].sum() + torch.sum(embeddings * 0), int(keep.sum())
    if type(reducer) is MeanReducer:
        return losses.sum(), losses.numel()
    if isinstance(reducer, ClassWeightedReducer):
        indices = loss_info["indices"]
        rows = indices if reduction_type == "element" else indices[0]
        return reducer.weighted(losses, rows, labels).sum(), losses.numel()
    raise ValueError(
        f"{type(reducer).__name__} cannot be reduced across ranks; use MeanReducer, SumReducer, "
        "AvgNonZeroReducer, DivisorReducer, ThresholdReducer, ClassWeightedReducer, PerAnchorReducer of those, "
        "MultipleReducers of those, or DoNothingReducer"
    )


def global_reduce(reducer: BaseReducer, loss_dict: dict, embeddings: torch.Tensor,
                  group: dist.ProcessGroup | None = None, labels: torch.Tensor | None = None) -> torch.Tensor | dict:
    """Reduce a local loss dict to the global loss (see module docstring for value and gradient)."""
    _, world_size = world_rank_and_size(group)
    if isinstance(reducer, DoNothingReducer):
        return loss_dict
    if isinstance(reducer, MultipleReducers):
        parts = [(reducer.reducers[k] if k in reducer.reducers else reducer.default_reducer, info)
                 for k, info in loss_dict.items()]
    else:
        if len(loss_dict) != 1:
            raise ValueError(f"{type(reducer).__name__} reduces one sub-loss, got {sorted(loss_dict)}")
        parts = [(reducer, next(iter(loss_dict.values())))]
    sums, counts = zip(*(_element_sum_and_count(r, info, embeddings, world_size, labels) for r, info in parts))
    totals = torch.tensor([float(s.detach()) for s in sums] + [float(c or 0) for c in counts], dtype=torch.float64,
                          device=embeddings.device)
    totals = all_reduce_sum_no_grad(totals, group)
    global_sums, global_counts = totals[: len(parts)].tolist(), totals[len(parts):].tolist()
    value, share = 0.0, torch.sum(embeddings * 0)  # value in float64, share keeps the embeddings' dtype
    for local_sum, count, global_sum, global_count in zip(sums, counts, global_sums, global_counts):
        if count is None:  # plain sum
            value, share = value + global_sum, share + local_sum
        elif global_count > 0:
            value, share = value + global_sum / global_count, share + local_sum / global_count
    value = torch.tensor(value, dtype=embeddings.dtype, device=embeddings.device)
    surrogate = world_size * share
    return surrogate + (value - surrogate).detach()


def reduce_with_global_regularization(loss: BaseMetricLossFunction, loss_dict: dict, embeddings: torch.Tensor,
                                      group: dist.ProcessGroup | None = None, labels: torch.Tensor | None = None,
                                      all_emb: torch.Tensor | None = None) -> torch.Tensor | dict:
    """`global_reduce` of the loss dict, with its `embedding_reg_loss` (if any) taken over the global batch
    (`all_emb`, the gathered `embeddings` with gradient; gathered here when not given). See module docstring."""
    local_term = loss_dict.pop(EMBEDDING_REG_KEY, None)
    reduced = global_reduce(loss.reducer, loss_dict, embeddings, group, labels)
    if local_term is None:
        return reduced
    if all_emb is None:
        all_emb = all_gather_with_grad(embeddings, group)
    term = loss.embedding_regularization_loss(all_emb)
    if isinstance(reduced, dict):  # DoNothingReducer: the dict, with the global term
        return {**reduced, EMBEDDING_REG_KEY: term}
    return reduced + term["losses"].reshape(())


class DistributedMiner(torch.nn.Module):
    """Mine the local anchors against the global batch; returns indices into (local queries, global refs)."""

    def __init__(self, miner: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.miner = miner
        self.group = group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        all_emb, all_labels, query_ref_index = gather_batch(embeddings.detach(), labels, self.group)
        return self.miner(embeddings, labels, all_emb, all_labels, query_ref_index=query_ref_index)


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor | None,
                 group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(global embeddings with gradient, global labels, global row of each local row)."""
    rank, _ = world_rank_and_size(group)
    sizes = gather_sizes(embeddings, group, name="embeddings")
    all_emb = all_gather_with_grad(embeddings, group, sizes=sizes)
    all_labels = None if labels is None else all_gather_no_grad(labels.to(embeddings.device), group, name="labels")
    offset = global_offsets(sizes)[rank]
    query_ref_index = torch.arange(embeddings.shape[0], device=embeddings.device) + offset
    return all_emb, all_labels, query_ref_index


class DistributedLoss(torch.nn.Module):
    """Wrap any dmlscale metric loss (and optional miner) so that it sees the global batch.

    `loss(embeddings, labels=None, indices_tuple=None)`: a given `indices_tuple` indexes this rank's
    batch (anchors and positives/negatives local) and is mapped to global reference rows.
    """

    def __init__(self, loss: BaseMetricLossFunction, miner: torch.nn.Module | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not isinstance(loss, BaseMetricLossFunction):
            raise ValueError(f"DistributedLoss wraps a dmlscale metric loss, got {type(loss).__name__}")
        if getattr(loss, "ref_emb_is_second_view", False):
            raise ValueError(f"DistributedLoss cannot wrap {type(loss).__name__}: its ref_emb is a second view of "
                             "the same samples, not a reference batch to gather")
        self.loss = loss
        self.miner = miner
        self.group = group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                indices_tuple: tuple[torch.Tensor, ...] | None = None, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> torch.Tensor | dict:
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("DistributedLoss builds the reference batch itself; ref_emb/ref_labels must be None")
        if self.miner is not None and indices_tuple is not None:
            raise ValueError("pass either a miner to DistributedLoss or an indices_tuple, not both")
        if self.loss.uses_batch_statistics and world_rank_and_size(self.group)[1] > 1:
            raise ValueError(f"DistributedLoss cannot split {type(self.loss).__name__} across ranks exactly: it uses "
                             "statistics over all the pairs of the batch, which each rank would take from its own "
                             "rows; train it on one process")
        if not self.loss.compares_to_reference:
            # per-sample terms (CenterLoss, proxy losses): nothing to gather. A tuple weighs each sample by its
            # count over the largest count in the tuple, a maximum over the whole batch that no rank sees.
            if self.miner is not None or indices_tuple is not None:
                _, world_size = world_rank_and_size(self.group)
                if world_size > 1:
                    raise ValueError(
                        f"{type(self.loss).__name__} weighs samples by their count in the indices tuple over the "
                        f"largest count in the global batch, which no rank sees; under DistributedLoss with "
                        f"{world_size} ranks it takes neither a miner nor an indices_tuple")
                if self.miner is not None:
                    indices_tuple = self.miner(embeddings, labels)
            loss_dict = self.loss.loss_dict(embeddings, labels, indices_tuple)
            return reduce_with_global_regularization(self.loss, loss_dict, embeddings, self.group, labels)
        all_emb, all_labels, query_ref_index = gather_batch(embeddings, labels, self.group)
        if self.miner is not None:
            indices_tuple = self.miner(embeddings, labels, all_emb.detach(), all_labels, query_ref_index=query_ref_index)
        elif indices_tuple is not None:
            indices_tuple = tuple_to_reference_rows(indices_tuple, query_ref_index)
        loss_dict = self.loss.loss_dict(embeddings, labels, indices_tuple, all_emb, all_labels,
                                        query_ref_index=query_ref_index)
        # every rank must run the gather's backward (an all_reduce), also one whose rows used no reference
        # (NPairsLoss on a rank holding no anchor, a miner that found nothing here): a zero keeps it connected
        connect = torch.sum(all_emb * 0)
        reduced = reduce_with_global_regularization(self.loss, loss_dict, embeddings, self.group, labels, all_emb)
        return reduced if isinstance(reduced, dict) else reduced + connect


__all__ = ["DistributedLoss", "DistributedMiner", "gather_batch", "global_reduce", "reduce_with_global_regularization"]

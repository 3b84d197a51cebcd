"""PML's DistributedLossWrapper / DistributedMinerWrapper names over DistributedLoss / DistributedMiner.

Legend: n local rows, W world size.

Deliberate differences from PML (pytorch_metric_learning.utils.distributed):
- `efficient` is accepted and has no effect (True warns so): both values run dmlscale's exact global computation (local
  queries against the gradient-carrying global batch, reduced globally). PML's efficient=False returns
  W x the single-process loss (gradients equal to ours, W x this rank's share); PML's efficient=True
  computes local-vs-global pairs and returns W x their local mean. Here the *value* is the single-process
  loss on the concatenated batch on every rank, and the gradient is W x this rank's share, as in
  DistributedLoss (DDP's average then gives the single-process gradient).
- An `indices_tuple` must come from `DistributedMinerWrapper` (PML's convention indexes PML's own gathered
  order, which dmlscale does not use); ref_emb / ref_labels are refused across ranks.
- CrossBatchMemory is also accepted with efficient=True (PML refuses it); it maps to DistributedCrossBatchMemory.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from dmlscale.distributed.collectives import world_rank_and_size
from dmlscale.distributed.global_loss import DistributedLoss, DistributedMiner
from dmlscale.distributed.global_memory import DistributedCrossBatchMemory
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.memory import CrossBatchMemory


class GlobalIndicesTuple(tuple):
    """Indices mined by DistributedMinerWrapper: local anchors (rows of this rank) x global reference rows."""


class _GivenIndices(torch.nn.Module):
    """A 'miner' for DistributedLoss that hands back indices mined earlier by DistributedMinerWrapper."""

    def __init__(self, indices_tuple: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.indices_tuple = tuple(indices_tuple)

    def forward(self, *args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        return self.indices_tuple


def _check_efficient(wrapper: str, efficient: bool) -> bool:
    if not isinstance(efficient, bool):
        raise ValueError(f"efficient must be a bool, got {efficient!r}")
    if efficient:
        warnings.warn(f"{wrapper}(efficient=True) has no effect in dmlscale: both values compute the exact "
                      "global loss (local queries against the global batch, reduced globally)", stacklevel=3)
    return efficient


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class DistributedLossWrapper(torch.nn.Module):
    """PML's DistributedLossWrapper(loss, efficient=False): the exact global loss on every rank.

    Wraps a dmlscale metric loss (-> DistributedLoss) or a CrossBatchMemory (-> DistributedCrossBatchMemory).
    Without a process group it warns and returns the plain loss, as PML does.
    """

    def __init__(self, loss: BaseMetricLossFunction | CrossBatchMemory, efficient: bool = False, *,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory)):
            raise ValueError(f"DistributedLossWrapper wraps a dmlscale metric loss or CrossBatchMemory, "
                             f"got {type(loss).__name__}")
        self.loss = loss
        self.efficient = _check_efficient("DistributedLossWrapper", efficient)
        self.group = group
        self.distributed = (DistributedCrossBatchMemory(loss, group) if isinstance(loss, CrossBatchMemory)
                            else DistributedLoss(loss, group=group))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                indices_tuple: tuple[torch.Tensor, ...] | None = None, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None, enqueue_mask: torch.Tensor | None = None) -> torch.Tensor | dict:
        is_memory = isinstance(self.loss, CrossBatchMemory)
        if is_memory and (ref_emb is not None or ref_labels is not None):
            raise ValueError("CrossBatchMemory is not compatible with ref_emb and ref_labels")
        if not is_memory and enqueue_mask is not None:
            raise ValueError("enqueue_mask is for a wrapped CrossBatchMemory; this wraps "
                             f"{type(self.loss).__name__}")
        if not _is_distributed():
            warnings.warn("DistributedLossWrapper is being used in a non-distributed setting. "
                          "Returning the loss as is.")
            if is_memory:
                return self.loss(embeddings, labels, indices_tuple, enqueue_mask)
            return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("DistributedLossWrapper builds the global reference batch itself; ref_emb and "
                             "ref_labels must be None across ranks")
        if world_rank_and_size(self.group)[1] == 1 and not is_memory:  # one rank: local rows are the global rows
            return self.distributed(embeddings, labels, None if indices_tuple is None else tuple(indices_tuple))
        if indices_tuple is not None and not isinstance(indices_tuple, GlobalIndicesTuple):
            raise ValueError("DistributedLossWrapper takes an indices_tuple only from DistributedMinerWrapper "
                             f"(local anchors x global rows), got a plain {type(indices_tuple).__name__}")
        if is_memory:
            if indices_tuple is not None:
                raise ValueError("a wrapped CrossBatchMemory mines with its own miner; pass no indices_tuple")
            return self.distributed(embeddings, labels, None, enqueue_mask)
        if indices_tuple is None:
            return self.distributed(embeddings, labels)
        return DistributedLoss(self.loss, miner=_GivenIndices(indices_tuple), group=self.group)(embeddings, labels)


class DistributedMinerWrapper(torch.nn.Module):
    """PML's DistributedMinerWrapper(miner, efficient=False): mine this rank's anchors against the global batch.

    Returns a GlobalIndicesTuple (local anchor rows, global reference rows) that DistributedLossWrapper
    takes as its indices_tuple; both efficient values mine the same tuples. Without a process group it
    returns the plain miner's tuple.
    """

    def __init__(self, miner: torch.nn.Module, efficient: bool = False, *,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not callable(miner):
            raise ValueError(f"DistributedMinerWrapper wraps a miner, got {type(miner).__name__}")
        self.miner = miner
        self.efficient = _check_efficient("DistributedMinerWrapper", efficient)
        self.group = group
        self.distributed = DistributedMiner(miner, group)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if not _is_distributed():
            return self.miner(emb, labels, ref_emb, ref_labels)
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("DistributedMinerWrapper builds the global reference batch itself; ref_emb and "
                             "ref_labels must be None across ranks")
        return GlobalIndicesTuple(self.distributed(emb, labels))


__all__ = ["DistributedLossWrapper", "DistributedMinerWrapper", "GlobalIndicesTuple"]

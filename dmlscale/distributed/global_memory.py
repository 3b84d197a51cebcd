"""Cross-batch memory across ranks: every rank enqueues the gathered global batch in rank order, so
all ranks hold an identical queue; each rank's queries are scored against it and the loss is reduced
globally (value = single-process loss on the concatenated batch; gradient convention as DistributedLoss).

Legend: n local queries, W world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dmlscale.distributed.collectives import all_gather_no_grad, gather_sizes, global_offsets, world_rank_and_size
from dmlscale.distributed.global_loss import reduce_with_global_regularization
from dmlscale.memory import CrossBatchMemory


class DistributedCrossBatchMemory(torch.nn.Module):
    """Wrap a `CrossBatchMemory`; call on each rank with its local batch (sizes may differ)."""

    def __init__(self, memory: CrossBatchMemory, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not isinstance(memory, CrossBatchMemory):
            raise ValueError(f"DistributedCrossBatchMemory wraps a CrossBatchMemory, got {type(memory).__name__}")
        self.memory = memory
        self.group = group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple[torch.Tensor, ...] | None = None,
                enqueue_mask: torch.Tensor | None = None) -> torch.Tensor | dict:
        rank, world_size = world_rank_and_size(self.group)
        if self.memory.loss.uses_batch_statistics and world_size > 1:
            raise ValueError(f"DistributedCrossBatchMemory cannot split {type(self.memory.loss).__name__} across "
                             "ranks exactly: it uses statistics over all the pairs of the batch; train it on one process")
        queries, query_labels, to_queue, queue_labels, queries_enqueued = self.memory.split_batch(
            embeddings, labels, indices_tuple, enqueue_mask)
        sizes = gather_sizes(to_queue, self.group, name="embeddings to enqueue")
        all_queue = all_gather_no_grad(to_queue, self.group, sizes=sizes)
        all_labels = all_gather_no_grad(queue_labels, self.group, name="labels to enqueue")
        slots = self.memory.enqueue(all_queue, all_labels)
        start = global_offsets(sizes)[rank]
        local_slots = slots[start:start + sizes[rank]]
        query_slots = local_slots if queries_enqueued else torch.full_like(query_labels, -1)
        loss_dict = self.memory.loss_against_memory(queries, query_labels, query_slots, indices_tuple, reduce=False)
        return reduce_with_global_regularization(self.memory.loss, loss_dict, queries, self.group, query_labels)

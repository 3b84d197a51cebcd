"""CrossBatchMemory (Wang et al. 2020, "Cross-Batch Memory for Embedding Learning"), PML-compatible.

Legend: B batch rows, M memory slots, D embedding size.
A ring buffer of past (detached) embeddings and labels. Each call enqueues the batch, then computes
`loss(batch, labels, ref_emb=memory, ref_labels=memory_labels)`: queries carry gradients, memory does
not. A query's own slot is excluded through `query_ref_index` (not by pairs removed after mining, as
PML does), so a miner never picks a sample as its own positive. This module holds queue state only;
`dmlscale.distributed.DistributedCrossBatchMemory` enqueues the global batch so every rank holds the
same queue.
"""

from __future__ import annotations

import torch

from dmlscale.indices import tuple_to_reference_rows
from dmlscale.inputs import check_embeddings, check_labels
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int


PML_SUPPORTED_LOSSES = ["AngularLoss", "CircleLoss", "ContrastiveLoss", "GeneralizedLiftedStructureLoss",
                        "IntraPairVarianceLoss", "LiftedStructureLoss", "MarginLoss", "MultiSimilarityLoss", "NCALoss",
                        "NTXentLoss", "SignalToNoiseRatioContrastiveLoss", "SupConLoss", "TripletMarginLoss",
                        "TupletMarginLoss"]
DMLSCALE_SUPPORTED_LOSSES = ["BatchAllTripletLoss", "BatchHardTripletLoss", "BinomialDevianceLoss",
                             "DistanceWeightedMarginLoss", "GaussianWeightedNegativeLoss", "HardPairLoss",
                             "SoftMarginTripletLoss"]


class CrossBatchMemory(torch.nn.Module):
    """`CrossBatchMemory(loss, embedding_size, memory_size=1024, miner=None)`; call as
    `cbm(embeddings, labels, indices_tuple=None, enqueue_mask=None)`.

    `enqueue_mask` (bool, B): rows to enqueue (they become references only); the other rows are the
    queries. Without it every row is enqueued and also queried. As in PML, `curr_batch_idx` holds the
    slots of the rows enqueued last, `add_to_memory(embeddings, labels, batch_size)` enqueues, and
    `supported_losses()` names the losses meant for a memory.
    """

    def __init__(self, loss: BaseMetricLossFunction, embedding_size: int, memory_size: int = 1024,
                 miner: torch.nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(loss, BaseMetricLossFunction) or not loss.compares_to_reference:
            raise ValueError(f"CrossBatchMemory needs a dmlscale loss that compares to references, got {type(loss).__name__}")
        self.loss = loss
        self.miner = miner
        self.embedding_size = check_positive_int("CrossBatchMemory", "embedding_size", embedding_size)
        self.memory_size = check_positive_int("CrossBatchMemory", "memory_size", memory_size)
        self.reset_queue()

    @staticmethod
    def supported_losses() -> list[str]:
        """Names of the losses meant for a memory: PML's list (those of them dmlscale has work here), then
        dmlscale's own losses that compare queries to references."""
        return PML_SUPPORTED_LOSSES + DMLSCALE_SUPPORTED_LOSSES

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        """Raise a ValueError unless `loss_name` is in `supported_losses()` (PML raises a bare Exception)."""
        if loss_name not in cls.supported_losses():
            raise ValueError(f"CrossBatchMemory not supported for {loss_name}; supported: {cls.supported_losses()}")

    def reset_queue(self) -> None:
        self.register_buffer("embedding_memory", torch.zeros(self.memory_size, self.embedding_size))
        self.register_buffer("label_memory", torch.zeros(self.memory_size, dtype=torch.long))
        self.queue_idx = 0
        self.has_been_filled = False

    def add_to_memory(self, embeddings: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        """PML's name for `enqueue`: write `batch_size` rows into the ring; `curr_batch_idx` holds their slots."""
        if batch_size != len(embeddings) or batch_size != len(labels):
            raise ValueError(f"add_to_memory: batch_size={batch_size} but there are {len(embeddings)} embeddings "
                             f"and {len(labels)} labels")
        self.enqueue(embeddings, labels)

    def enqueue(self, embeddings_BD: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Write rows into the ring (detached) and return the slot of each row (also kept as `curr_batch_idx`)."""
        if len(embeddings_BD) > self.memory_size:
            raise ValueError(f"cannot enqueue {len(embeddings_BD)} rows into a memory of {self.memory_size}")
        self.embedding_memory = self.embedding_memory.to(device=embeddings_BD.device, dtype=embeddings_BD.dtype)
        self.label_memory = self.label_memory.to(device=labels_B.device, dtype=labels_B.dtype)
        slots_B = (torch.arange(len(embeddings_BD), device=labels_B.device) + self.queue_idx) % self.memory_size
        self.curr_batch_idx = slots_B
        self.embedding_memory[slots_B] = embeddings_BD.detach()
        self.label_memory[slots_B] = labels_B.detach()
        previous = self.queue_idx
        self.queue_idx = (self.queue_idx + len(embeddings_BD)) % self.memory_size
        if not self.has_been_filled and self.queue_idx <= previous and len(embeddings_BD) > 0:
            self.has_been_filled = True
        return slots_B

    def filled_memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots written so far (all of them once the ring has wrapped)."""
        if self.has_been_filled:
            return self.embedding_memory, self.label_memory
        return self.embedding_memory[: self.queue_idx], self.label_memory[: self.queue_idx]

    def split_batch(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple[torch.Tensor, ...] | None,
        enqueue_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Validate and return (queries, query labels, rows to enqueue, their labels, queries-are-enqueued)."""
        check_embeddings("embeddings", embeddings)
        if labels is None:
            raise ValueError("CrossBatchMemory needs labels; got labels=None")
        check_labels("labels", labels, len(embeddings))
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have size {embeddings.shape[1]} but embedding_size={self.embedding_size}")
        labels = labels.to(embeddings.device)
        if enqueue_mask is None:
            return embeddings, labels, embeddings, labels, True
        if indices_tuple is not None:
            raise ValueError("indices_tuple and enqueue_mask are mutually exclusive")
        if not torch.is_tensor(enqueue_mask) or enqueue_mask.dtype != torch.bool or enqueue_mask.shape != labels.shape:
            raise ValueError(f"enqueue_mask must be a bool tensor of shape {tuple(labels.shape)}, got {enqueue_mask!r}")
        return embeddings[~enqueue_mask], labels[~enqueue_mask], embeddings[enqueue_mask], labels[enqueue_mask], False

    def loss_against_memory(
        self, queries: torch.Tensor, query_labels: torch.Tensor, query_slots: torch.Tensor,
        indices_tuple: tuple[torch.Tensor, ...] | None, *, reduce: bool = True,
    ) -> torch.Tensor | dict:
        """Loss (or its local loss dict when reduce=False) of the queries against the filled memory.

        A given `indices_tuple` indexes the current batch; its positives/negatives are mapped to the
        slots those rows were written to (and joined to the mined tuple when there is a miner)."""
        mem_emb, mem_labels = self.filled_memory()
        if indices_tuple is not None:
            indices_tuple = tuple_to_reference_rows(indices_tuple, query_slots)
        if self.miner is not None:
            mined = self.miner(queries, query_labels, mem_emb, mem_labels, query_ref_index=query_slots)
            indices_tuple = mined if indices_tuple is None else concatenate_tuples(mined, indices_tuple)
        if reduce:
            return self.loss(queries, query_labels, indices_tuple, mem_emb, mem_labels, query_ref_index=query_slots)
        return self.loss.loss_dict(queries, query_labels, indices_tuple, mem_emb, mem_labels, query_ref_index=query_slots)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple[torch.Tensor, ...] | None = None,
                enqueue_mask: torch.Tensor | None = None) -> torch.Tensor | dict:
        queries, query_labels, to_queue, queue_labels, queries_enqueued = self.split_batch(
            embeddings, labels, indices_tuple, enqueue_mask)
        slots = self.enqueue(to_queue, queue_labels)
        query_slots = slots if queries_enqueued else torch.full_like(query_labels, -1)
        return self.loss_against_memory(queries, query_labels, query_slots, indices_tuple)


def concatenate_tuples(first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Join two index tuples of the same arity (a user tuple added to the mined one)."""
    if len(first) != len(second):
        raise ValueError(f"cannot join an indices_tuple of length {len(second)} to mined tuples of length {len(first)}")
    return tuple(torch.cat([x, y.to(x.device)]) for x, y in zip(first, second))


"""The deterministic epoch plan: which samples each (rank, worker) slot reads, computed identically on
every rank from (seed, epoch) and the shard sizes, with no communication.

Epoch mode: the shards are permuted with a generator seeded by (seed, epoch) and laid end to end as
one stream of N samples. Every rank gets B = floor(N / (world_size * batch_size)) batches; the
DataLoader hands out a rank's batches round-robin over its W workers, so worker w makes batches
w, w + W, ... (ceil((B - w) / W) of them). The stream is cut into consecutive pieces, one per slot
(rank-major), each exactly as long as its slot's batches need; the last N - world_size * B *
batch_size samples (under one global batch) are left out of this epoch, a different set each epoch.
A slot whose piece holds bad samples refills the shortfall from a refill stream that starts in the
left-out remainder and then wraps around the epoch's stream; only refill can repeat a sample, and a
refill sample outside the slot's own share of the remainder is counted as a repeat (it lies in
another slot's piece or remainder share, or this slot read it on an earlier lap).

Resampled mode: each slot draws whole shards with replacement, shard j of source s with probability
proportional to weight_s * size_j / size_s (so sources contribute samples in the ratio of their
weights), from a generator seeded by (seed, epoch, slot).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dmlscale.data.shard_list import ShardSet

# purposes mixed into the seed, so shard order, sample buffers and resampling never share a stream
SHARD_ORDER, SAMPLE_BUFFER, RESAMPLE = 0, 1, 2


def generator(seed: int, epoch: int, purpose: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose, *extra])


def worker_batches(num_batches: int, num_workers: int, worker: int) -> int:
    """Batches worker `worker` makes when a rank's `num_batches` are dealt round-robin."""
    return max(0, -(-(num_batches - worker) // num_workers))


def batches_before(position: int, num_workers: int, worker: int) -> int:
    """How many of worker `worker`'s batches come before the rank's batch number `position`."""
    return worker_batches(position, num_workers, worker)


@dataclass(frozen=True)
class SlotLayout:
    batch_size: int
    world_size: int
    num_workers: int  # DataLoader workers per rank; 0 counts as 1 (the main process reads)
    num_batches: int  # per rank per epoch

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def slot(self, rank: int, worker: int) -> int:
        return rank * self.workers + worker

    def slot_samples(self, slot: int) -> int:
        return worker_batches(self.num_batches, self.workers, slot % self.workers) * self.batch_size

    def slot_start(self, slot: int) -> int:
        """Offset of the slot's piece in the epoch stream."""
        rank, worker = divmod(slot, self.workers)
        per_rank = self.num_batches * self.batch_size
        return rank * per_rank + sum(self.slot_samples(rank * self.workers + w) for w in range(worker))

    @property
    def num_slots(self) -> int:
        return self.world_size * self.workers


def stream_ranges(sizes: list[int], order: np.ndarray, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(shard, first, end) position ranges covering stream offsets start..stop-1, where the stream is the
    shards in `order` laid end to end."""
    offset = 0
    for shard in order.tolist():
        size = sizes[shard]
        low, high = max(start, offset), min(stop, offset + size)
        if low < high:
            yield shard, low - offset, high - offset
        offset += size
        if offset >= stop:
            return


class EpochPlan:
    """The shard order of one epoch and each slot's piece and refill stream.

    `available` (sorted disjoint [low, high) intervals of epoch-stream offsets) plans a later segment
    of an epoch resumed at another layout (segments.py): the slots then cut up only those positions,
    in stream order, as if they were the whole stream. None: the whole epoch."""

    def __init__(self, shard_set: ShardSet, layout: SlotLayout, seed: int, epoch: int,
                 available: tuple[tuple[int, int], ...] | None = None) -> None:
        self.sizes = [shard.num_samples for shard in shard_set.shards]
        self.layout, self.epoch_total = layout, sum(self.sizes)
        self.order = generator(seed, epoch, SHARD_ORDER).permutation(len(self.sizes))
        starts = np.zeros(len(self.sizes), dtype=np.int64)  # each shard's offset in the epoch stream
        ordered_sizes = np.array(self.sizes, dtype=np.int64)[self.order]
        starts[self.order] = np.cumsum(ordered_sizes) - ordered_sizes
        self.shard_start = starts.tolist()
        self.available = ((0, self.epoch_total),) if available is None else tuple(available)
        lengths = [high - low for low, high in self.available]
        self.available_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tolist()
        self.total = self.available_start[-1]  # samples this plan cuts up
        self.used = layout.world_size * layout.num_batches * layout.batch_size

    def stream_offset(self, shard: int, index: int) -> int:
        """Offset of a sample in the whole epoch stream."""
        return self.shard_start[shard] + index

    def ranges(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, first, end) position ranges of this plan's stream offsets start..stop-1."""
        first = max(0, bisect.bisect_right(self.available_start, start) - 1)
        for interval in range(first, len(self.available)):
            begin = self.available_start[interval]
            if begin >= stop:
                return
            low, high = self.available[interval]
            low, high = low + max(0, start - begin), min(high, low + stop - begin)
            if low < high:
                yield from stream_ranges(self.sizes, self.order, low, high)

    def piece(self, slot: int) -> list[tuple[int, int, int]]:
        start = self.layout.slot_start(slot)
        return list(self.ranges(start, start + self.layout.slot_samples(slot)))

    def own_remainder(self, slot: int) -> int:
        """How many samples of the left-out remainder are the slot's own share (where its refill starts)."""
        remainder = self.total - self.used
        slots = self.layout.num_slots
        return (slot + 1) * remainder // slots - slot * remainder // slots if remainder > 0 else 0

    def refill(self, slot: int) -> Iterator[tuple[int, int, int]]:
        """Endless ranges: from the slot's share of the left-out remainder, wrapping around the stream.
        Only the first own_remainder(slot) positions are new to the epoch; the rest are repeats."""
        remainder = self.total - self.used
        if remainder > 0:
            begin = self.used + slot * remainder // self.layout.num_slots
        else:
            begin = slot * self.total // self.layout.num_slots
        while True:
            yield from self.ranges(begin, self.total)
            yield from self.ranges(0, begin)


def resampled_shards(shard_set: ShardSet, seed: int, epoch: int, slot: int) -> Iterator[int]:
    """Endless shard indices drawn with replacement (see the module docstring for the probabilities)."""
    source_sizes = {}
    for shard in shard_set.shards:
        source_sizes[shard.source] = source_sizes.get(shard.source, 0) + shard.num_samples
    weights = np.array([shard_set.weights[s.source] * s.num_samples / source_sizes[s.source]
                        if s.num_samples else 0.0 for s in shard_set.shards])
    probabilities = weights / weights.sum()
    rng = generator(seed, epoch, RESAMPLE, slot)
    while True:
        yield from rng.choice(len(probabilities), size=64, p=probabilities).tolist()

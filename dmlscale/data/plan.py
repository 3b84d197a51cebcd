"""The deterministic epoch plan: which samples each (rank, worker) slot reads, computed identically on
every rank from (seed, epoch) and the shard sizes, with no communication.

Epoch mode: the shards are permuted with a generator seeded by (seed, epoch) and laid end to end as
one stream of N samples. Every rank gets B = floor(N / (world_size * batch_size)) batches; the
DataLoader hands out a rank's batches round-robin over its W workers, so worker w makes batches
w, w + W, ... (ceil((B - w) / W) of them). The stream is cut into consecutive pieces, one per slot
(rank-major), each exactly as long as its slot's batches need; the last N - world_size * B *
batch_size samples (under one global batch) are left out of this epoch, a different set each epoch.
A slot whose piece holds bad samples refills the shortfall from a refill stream that starts in the
left-out remainder and then wraps around the epoch's stream; only refill can repeat a sample.

Resampled mode: each slot draws whole shards with replacement, shard j of source s with probability
proportional to weight_s * size_j / size_s (so sources contribute samples in the ratio of their
weights), from a generator seeded by (seed, epoch, slot).
"""

from __future__ import annotations

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
    """The shard order of one epoch and each slot's piece and refill stream."""

    def __init__(self, shard_set: ShardSet, layout: SlotLayout, seed: int, epoch: int):
        self.sizes = [shard.num_samples for shard in shard_set.shards]
        self.layout, self.total = layout, sum(self.sizes)
        self.order = generator(seed, epoch, SHARD_ORDER).permutation(len(self.sizes))
        self.used = layout.world_size * layout.num_batches * layout.batch_size

    def piece(self, slot: int) -> list[tuple[int, int, int]]:
        start = self.layout.slot_start(slot)
        return list(stream_ranges(self.sizes, self.order, start, start + self.layout.slot_samples(slot)))

    def refill(self, slot: int) -> Iterator[tuple[int, int, int]]:
        """Endless ranges: from the slot's share of the left-out remainder, wrapping around the stream."""
        remainder = self.total - self.used
        if remainder > 0:
            begin = self.used + slot * remainder // self.layout.num_slots
        else:
            begin = slot * self.total // self.layout.num_slots
        while True:
            yield from stream_ranges(self.sizes, self.order, begin, self.total)
            yield from stream_ranges(self.sizes, self.order, 0, begin)


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

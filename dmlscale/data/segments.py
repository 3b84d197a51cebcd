"""An epoch resumed at another layout (world size, workers, batch size) is read in segments.

Segment 0 is the epoch as planned (plan.py). When a run resumes at a new layout, the samples the
earlier segments consumed are recomputed, without communication, by replaying each old slot's stream
up to its share of that segment's consumed batches (reading and decoding, as a same-layout resume
does; a sample counts as consumed once its slot took it from the stream, handed out or skipped). What
is left - the epoch's stream offsets minus the consumed ones, in stream order - is planned for the
new layout like a whole epoch: num_batches = left // (world_size * batch_size), fewer than one global
batch left out. So the rest of the epoch is read exactly once by the new ranks, and the segment list
(identical on every rank) lets a later resume, at yet another layout, replay the chain again.

Cost: every rank replays all consumed samples of the earlier segments once, in its main process (the
same-layout replay costs each worker only its own share); the next epoch is planned normally.
"""

from __future__ import annotations

import dataclasses

from dmlscale.data.plan import SlotLayout, batches_before
from dmlscale.data.slot_stream import SlotStream, StreamConfig

SEGMENT_FIELDS = ("world_size", "num_workers", "batch_size", "num_batches", "batches_consumed")


def check_segment(segment: object, index: int) -> dict:
    """`segment` as a dict of ints; ValueError naming the first bad field."""
    if not isinstance(segment, dict):
        raise ValueError(f"data stream state: segments[{index}] must be a dict, got {segment!r:.80}")
    for name in SEGMENT_FIELDS:
        value = segment.get(name)
        minimum = 0 if name in ("num_workers", "batches_consumed") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"data stream state: segments[{index}][{name!r}] must be an int >= {minimum}, "
                             f"got {value!r}")
    if segment["batches_consumed"] > segment["num_batches"]:
        raise ValueError(f"data stream state: batches_consumed={segment['batches_consumed']} exceeds "
                         f"num_batches={segment['num_batches']} (segment {index})")
    return {name: segment[name] for name in SEGMENT_FIELDS}


def length(available: tuple[tuple[int, int], ...]) -> int:
    return sum(high - low for low, high in available)


def subtract(available: tuple[tuple[int, int], ...], consumed: list[int]) -> tuple[tuple[int, int], ...]:
    """The intervals of `available` without the (sorted, distinct) offsets in `consumed`."""
    left, index = [], 0
    for low, high in available:
        start = low
        while index < len(consumed) and consumed[index] < high:
            offset = consumed[index]
            assert offset >= start, "a consumed offset lies outside the available positions"
            if offset > start:
                left.append((start, offset))
            start, index = offset + 1, index + 1
        if start < high:
            left.append((start, high))
    assert index == len(consumed), "a consumed offset lies outside the available positions"
    return tuple(left)


def remaining(config: StreamConfig, epoch: int, segments: list[dict]) -> tuple[tuple[int, int], ...]:
    """Epoch-stream intervals left after the earlier `segments` (replayed in order) of `epoch`."""
    available = ((0, config.shard_set.num_samples),)
    for index, segment in enumerate(segments):
        layout = SlotLayout(batch_size=segment["batch_size"], world_size=segment["world_size"],
                            num_workers=segment["num_workers"], num_batches=segment["num_batches"])
        planned = length(available) // (layout.world_size * layout.batch_size)
        if planned != segment["num_batches"]:
            raise ValueError(f"data stream state: segments[{index}] has num_batches={segment['num_batches']} but "
                             f"the shards give {planned} for its layout; was it saved with other shards?")
        segment_config = dataclasses.replace(config, layout=layout, available=None if index == 0 else available)
        consumed: list[int] = []
        for slot in range(layout.num_slots):
            rank, worker = divmod(slot, layout.workers)
            num_samples = batches_before(segment["batches_consumed"], layout.workers, worker) * layout.batch_size
            if num_samples:
                stream = SlotStream(dataclasses.replace(segment_config, rank=rank), epoch, 0)
                consumed += stream.consumed_positions(slot, num_samples)
        available = subtract(available, sorted(set(consumed)))
    return available

"""What one (rank, worker) slot reads: its planned samples, shuffled, decoded, batched, deterministic.

Runs inside a DataLoader worker (or the main process when num_workers=0). The order of samples is a
pure function of (seed, epoch, rank, worker), so resuming at batch b means replaying this slot's
stream up to its share of the first b batches: the tars are read and the images decoded (a sample's
validity is only known after decoding), but transforms and tokenisation are skipped. Random image
augmentations are seeded per batch, so they too are the same after a resume.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dmlscale.data.decode import BadSample, decode_sample
from dmlscale.data.plan import SAMPLE_BUFFER, EpochPlan, SlotLayout, batches_before, generator, resampled_shards, \
    worker_batches
from dmlscale.data.shard_list import ShardSet
from dmlscale.data.skip_log import DirtyDataError, SkipLog
from dmlscale.data.tar_reader import RawSample, count_samples, read_samples

if TYPE_CHECKING:
    import PIL.Image

WORKER_ERROR = "_error"  # a batch with only this key carries a DataLoader worker's ValueError to the Loader


@dataclass(frozen=True)
class StreamConfig:
    shard_set: ShardSet
    layout: SlotLayout
    rank: int
    seed: int
    mode: str  # "epoch" | "resampled"
    task: str  # "image_text" | "image_label"
    image_transform: Callable | None
    text_encoder: Callable | None
    shuffle_buffer: int
    max_image_pixels: int
    max_skip_fraction: float
    skip_check_after: int
    log_interval_s: float
    local_skip_check: bool = True  # False: the trainer checks the skip fraction over all ranks
    available: tuple[tuple[int, int], ...] | None = None  # epoch-stream intervals left for this segment


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A seeded shuffle buffer of `size` items: emit a random buffered item as each new one arrives."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """Float C x H x W in [0, 1], the default when no image_transform is given."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def _reasons(skip_log: SkipLog) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(skip_log.by_reason.items()))


class SlotStream(IterableDataset):
    """Yields this slot's batches of `epoch` from the rank's batch number `start_batch` on."""

    def __init__(self, config: StreamConfig, epoch: int, start_batch: int) -> None:
        self.config, self.epoch, self.start_batch = config, epoch, start_batch

    def __iter__(self) -> Iterator[dict]:
        if get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        except ValueError as error:  # bad data or a bad shard, in a DataLoader worker: torch would re-raise it
            yield {WORKER_ERROR: error}  # with the worker's traceback as its message; the Loader raises it as is

    def _batches(self) -> Iterator[dict]:
        config, layout = self.config, self.config.layout
        info = get_worker_info()
        loader_worker = info.id if info is not None else 0
        worker = (loader_worker + self.start_batch) % layout.workers  # the DataLoader starts with its worker 0
        slot = layout.slot(config.rank, worker)
        skip_log = SkipLog(max_skip_fraction=config.max_skip_fraction, check_after=config.skip_check_after,
                           log_interval_s=config.log_interval_s, where=f"rank {config.rank} worker {worker}: ",
                           local_check=config.local_skip_check)
        samples = self._valid_samples(slot, skip_log)
        first = batches_before(self.start_batch, layout.workers, worker)
        for _ in range(first * layout.batch_size):  # replay what was already consumed
            next(samples)
        if first:
            skip_log.forget_counts()  # the replayed samples were counted when they were first read
        for local_batch in range(first, worker_batches(layout.num_batches, layout.workers, worker)):
            chosen = [next(samples) for _ in range(layout.batch_size)]
            batch = self._collate(chosen, slot, local_batch)
            batch["_worker"], batch["_skips"] = loader_worker, skip_log.snapshot()
            yield batch

    def _read(self, shard: int, low: int, high: int, skip_log: SkipLog) -> Iterator[RawSample]:
        """Positions low..high-1 of a shard; an unusable shard (missing, not a tar) gives only skips."""
        entry = self.config.shard_set.shards[shard]
        if entry.problem is not None:
            for index in range(low, high):
                yield RawSample(shard, index, "", problem=entry.problem)
            return

        def disagree():
            if entry.path not in skip_log.sizes_checked:  # one count per shard and reader
                skip_log.sizes_checked.add(entry.path)
                actual = count_samples(entry.path)
                if actual != entry.num_samples:
                    skip_log.sizes_disagree(entry.path, entry.num_samples, actual)

        yield from read_samples(entry.path, shard, low, high, listed=entry.num_samples, on_size_mismatch=disagree)

    def _raw_stream(self, slot: int, known_bad: set, skip_log: SkipLog) -> Iterator[RawSample]:
        config, shards = self.config, self.config.shard_set.shards
        rng = random.Random(int(generator(config.seed, self.epoch, SAMPLE_BUFFER, slot).integers(2**63)))
        if config.mode == "resampled":
            drawn = resampled_shards(config.shard_set, config.seed, self.epoch, slot)
            raw = (sample for shard in drawn for sample in self._read(shard, 0, shards[shard].num_samples, skip_log))
            yield from shuffled(raw, config.shuffle_buffer, rng)
            return
        plan = EpochPlan(config.shard_set, config.layout, config.seed, self.epoch, config.available)
        piece = (sample for shard, low, high in plan.piece(slot) for sample in self._read(shard, low, high, skip_log))
        yield from shuffled(piece, config.shuffle_buffer, rng)
        passed = 0  # known-bad positions passed in a row: a whole lap of them means nothing is left
        fresh = plan.own_remainder(slot)  # refill positions that are new to the epoch; the rest are repeats
        for shard, low, high in plan.refill(slot):  # only reached when the piece held bad samples
            for sample in self._read(shard, low, high, skip_log):
                sample.repeat = fresh <= 0
                fresh -= 1
                if (sample.shard, sample.index) not in known_bad:
                    passed = 0
                    yield sample
                    continue
                passed += 1
                if passed > plan.total:
                    raise DirtyDataError(f"no readable sample left in epoch {self.epoch}: every sample that reader "
                                         f"{slot} may still read from the {len(shards)} shards is unreadable "
                                         f"({_reasons(skip_log)}), e.g. in {shards[shard].path}; fix or replace "
                                         f"the shards")

    def consumed_positions(self, slot: int, num_samples: int) -> list[int]:
        """Epoch-stream offsets of every sample the slot processed (handed out or skipped) up to its
        `num_samples`-th usable one: a replay that reads and decodes, without transforms."""
        skip_log = SkipLog(max_skip_fraction=1.0, check_after=1, log_interval_s=float("inf"), local_check=False,
                           where=f"replaying slot {slot}: ")
        processed: list[tuple[int, int]] = []
        samples = self._valid_samples(slot, skip_log, processed)
        for _ in range(num_samples):
            next(samples)
        config = self.config
        plan = EpochPlan(config.shard_set, config.layout, config.seed, self.epoch, config.available)
        return [plan.stream_offset(shard, index) for shard, index in processed]

    def _valid_samples(self, slot: int, skip_log: SkipLog,
                       processed: list | None = None) -> Iterator[tuple[str, object, object]]:
        """(key, PIL image, caption or label) of the slot's usable samples, endlessly; `processed`
        collects the (shard, position) of every sample taken from the stream."""
        config, known_bad, bad_in_a_row = self.config, set(), 0
        limit = max(config.shard_set.num_samples, 1) * 2
        for raw in self._raw_stream(slot, known_bad, skip_log):
            if processed is not None:
                processed.append((raw.shard, raw.index))
            reason = raw.problem
            if reason is None:
                try:
                    image, target = decode_sample(raw.fields, task=config.task,
                                                  max_image_pixels=config.max_image_pixels)
                except BadSample as bad:
                    reason = bad.reason
            if reason is None:
                bad_in_a_row = 0
                skip_log.saw_good(repeat=raw.repeat)
                yield raw.key, image, target
                continue
            known_bad.add((raw.shard, raw.index))
            skip_log.skip(reason, config.shard_set.shards[raw.shard].path, raw.key)
            bad_in_a_row += 1
            if bad_in_a_row > limit:
                raise DirtyDataError(f"no readable sample in {bad_in_a_row} reads in a row ({_reasons(skip_log)}); "
                                     f"shards: {sorted(skip_log.by_shard)[:10]}; fix or replace the shards")

    def _collate(self, chosen: list, slot: int, local_batch: int) -> dict:
        config = self.config
        keys = [key for key, _, _ in chosen]
        transform = config.image_transform or pil_to_tensor
        with torch.random.fork_rng(devices=[]):  # augmentations seeded per batch, global RNG untouched
            torch.manual_seed(int(generator(config.seed, self.epoch, SAMPLE_BUFFER, slot, local_batch + 1)
                                  .integers(2**63)))
            images = torch.stack([transform(image) for _, image, _ in chosen])
        batch = {"image": images, "key": keys}
        targets = [target for _, _, target in chosen]
        if config.task == "image_label":
            batch["label"] = torch.tensor(targets, dtype=torch.long)
        elif config.text_encoder is not None:
            batch.update(config.text_encoder(targets))
        else:
            batch["text"] = targets
        return batch

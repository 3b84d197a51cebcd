"""The WebDataset loader: balanced across ranks, tolerant of dirty data, resumable mid-epoch.

    loader = make_loader("shards/{000000..000099}.tar", batch_size=256, rank=rank, world_size=world,
                         num_workers=8, seed=0, image_transform=preprocess, tokenizer=tokenizer)
    for epoch in range(start_epoch, num_epochs):
        loader.set_epoch(epoch)
        for batch in loader:       # {"image": B x C x H x W, "text": B x L, "key": [B keys]}
            ...                    # exactly loader.num_batches batches on every rank
            checkpoint["data"] = loader.state_dict()

Every rank plans each epoch from (seed, epoch) and the shard sizes alone (see plan.py), so no rank
waits on another and all ranks make the same number of batches. Bad samples are skipped and counted
(skip_log.py); a slot that lost samples refills from outside its piece, so counts stay equal.

Trade-offs: an epoch leaves out fewer than world_size * batch_size samples (a different set each
epoch); a slot that skipped k samples reads k more, first from the epoch's left-out remainder, then
by wrapping around the epoch, where it repeats clean samples of that epoch; a key repeated in two
different shards is caught only within one tar or across a split sample; resuming at batch b
re-reads and re-decodes (without transforms) each worker's share of the first b batches, so a late
resume costs up to one epoch of decoding spread over the workers. A resume at another world size,
worker count or batch size reads the rest of the epoch once (segments.py), after replaying what the
earlier layout consumed, once per rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dmlscale.data.accounting import merge_totals
from dmlscale.data.decode import DEFAULT_MAX_IMAGE_PIXELS, TASKS
from dmlscale.data.plan import SlotLayout
from dmlscale.data.segments import length, remaining
from dmlscale.data.shard_list import ShardSet, ShardSources, check_missing_shards, list_shards
from dmlscale.data.slot_stream import WORKER_ERROR, SlotStream, StreamConfig
from dmlscale.data.stream_state import StreamState
from dmlscale.data.text_encoding import TextEncoder
from dmlscale.param_checks import check_positive_int, check_real

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from dmlscale.data.balanced_loader import BalancedLoader

MODES = ("epoch", "resampled")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"make_loader: {name} must be an int >= {minimum}, got {value!r}")
    return value


class Loader:
    """Iterable of batch dicts; see make_loader for the arguments."""

    def __init__(self, sources: ShardSet | ShardSources, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, mode: str = "epoch", task: str = "image_text",
                 image_transform: Callable | None = None,
                 tokenizer: Callable[[list[str]], torch.Tensor] | PreTrainedTokenizerBase | None = None,
                 context_length: int = 77, shuffle_buffer: int = 1000,
                 samples_per_epoch: int | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 max_skip_fraction: float = 0.1, skip_check_after: int = 1000, log_interval_s: float = 30.0,
                 pin_memory: bool = False, prefetch_factor: int = 4, multiprocessing_context: str | None = None,
                 local_skip_check: bool = True, missing_shards: str = "error") -> None:
        check_positive_int("make_loader", "batch_size", batch_size)
        check_positive_int("make_loader", "world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"make_loader: rank must be an int in [0, world_size={world_size}), got {rank!r}")
        for name, value in (("num_workers", num_workers), ("seed", seed), ("shuffle_buffer", shuffle_buffer)):
            _check_int(name, value, 0)
        check_positive_int("make_loader", "max_image_pixels", max_image_pixels)
        check_positive_int("make_loader", "prefetch_factor", prefetch_factor)
        check_real("make_loader", "max_skip_fraction", max_skip_fraction, minimum=0)
        _check_int("skip_check_after", skip_check_after, 1)
        check_real("make_loader", "log_interval_s", log_interval_s, minimum=0)
        if not isinstance(local_skip_check, bool):
            raise ValueError(f"make_loader: local_skip_check must be a bool, got {local_skip_check!r}")
        check_missing_shards(missing_shards)
        if mode not in MODES:
            raise ValueError(f"make_loader: mode must be one of {MODES}, got {mode!r}")
        if task not in TASKS:
            raise ValueError(f"make_loader: task must be one of {TASKS}, got {task!r}")
        if task == "image_label" and tokenizer is not None:
            raise ValueError("make_loader: tokenizer has no use with task='image_label'; pass tokenizer=None")
        shard_set = sources if isinstance(sources, ShardSet) else list_shards(sources, missing_shards=missing_shards)
        if mode == "epoch" and len(set(shard_set.weights)) > 1:
            raise ValueError(f"make_loader: source weights {list(shard_set.weights)} need mode='resampled'; an "
                             f"epoch reads every sample once")
        if samples_per_epoch is not None:
            if mode != "resampled":
                raise ValueError(f"make_loader: samples_per_epoch={samples_per_epoch} needs mode='resampled'")
            check_positive_int("make_loader", "samples_per_epoch", samples_per_epoch)
        num_samples = samples_per_epoch if samples_per_epoch is not None else shard_set.num_samples
        num_batches = num_samples // (world_size * batch_size)
        if num_batches == 0:
            raise ValueError(f"make_loader: {num_samples} samples per epoch are fewer than one global batch "
                             f"(world_size {world_size} x batch_size {batch_size})")
        layout = SlotLayout(batch_size=batch_size, world_size=world_size, num_workers=num_workers,
                            num_batches=num_batches)
        text_encoder = TextEncoder(tokenizer, context_length=context_length) if tokenizer is not None else None
        self.config = StreamConfig(
            shard_set=shard_set, layout=layout, rank=rank, seed=seed, mode=mode, task=task,
            image_transform=image_transform, text_encoder=text_encoder, shuffle_buffer=shuffle_buffer,
            max_image_pixels=max_image_pixels, max_skip_fraction=float(max_skip_fraction),
            skip_check_after=skip_check_after, log_interval_s=float(log_interval_s),
            local_skip_check=local_skip_check)
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.epoch_batches = num_batches  # per rank in a whole epoch, equal on every rank
        self._state = StreamState(epoch=0, batches_consumed=0, mode=mode, seed=seed, world_size=world_size,
                                  num_workers=num_workers, batch_size=batch_size, num_batches=num_batches,
                                  shards=shard_set.fingerprint())
        self._available: tuple[tuple[tuple[int, int], ...], ...] | None = None  # (key, intervals) of segments
        self._finished_skips: list[dict] = []  # worker snapshots of earlier passes
        self._current_skips: dict[int, dict] = {}

    @property
    def num_batches(self) -> int:
        """Per rank in the current epoch, equal on every rank: epoch_batches, except in an epoch resumed
        at another layout, where it counts the batches of the rest of that epoch."""
        return self._state.num_batches

    @property
    def num_samples(self) -> int:
        return self.num_batches * self.config.layout.batch_size

    def __len__(self) -> int:
        return self.num_batches

    def _start_epoch(self, epoch: int) -> None:
        state = self._state
        state.epoch, state.batches_consumed, state.num_batches, state.segments = epoch, 0, self.epoch_batches, []

    def _segment_available(self, epoch: int, segments: list[dict]) -> tuple[tuple[int, int], ...]:
        """The epoch-stream intervals left after `segments` of `epoch`, replayed once and cached."""
        key = (epoch, tuple(tuple(sorted(segment.items())) for segment in segments))
        if self._available is None or self._available[0] != key:
            self._available = (key, remaining(self.config, epoch, segments))
        return self._available[1]

    @property
    def epoch(self) -> int:
        return self._state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; keeps the position when `epoch` is the current one (so
        set_epoch after load_state_dict resumes in the middle)."""
        _check_int("epoch", epoch, 0)
        if epoch != self._state.epoch:
            self._start_epoch(epoch)

    def state_dict(self) -> dict:
        """(epoch, batches consumed, layout, earlier segments of the epoch) - identical on every rank."""
        return self._state.as_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state` stood: bitwise at the same layout; at another world size, worker count
        or batch size (epoch mode), the rest of the saved epoch is read once by this layout (segments.py:
        this replays what the earlier segments consumed, so it may take a while)."""
        checked = self._state.check(state)
        epoch, segments = checked["epoch"], checked["segments"]
        layout = self.config.layout
        global_batch = layout.world_size * layout.batch_size
        if checked["same_layout"]:
            planned = self.epoch_batches
            if segments:
                planned = length(self._segment_available(epoch, segments)) // global_batch
            if checked["num_batches"] != planned:
                raise ValueError(f"cannot resume the data stream: saved num_batches={checked['num_batches']} but this "
                                 f"loader plans num_batches={planned} for it")
            self._state.epoch, self._state.segments = epoch, segments
            self._state.batches_consumed, self._state.num_batches = checked["batches_consumed"], planned
            return
        closed = segments[-1]
        planned = 0
        if closed["batches_consumed"] < closed["num_batches"]:
            planned = length(self._segment_available(epoch, segments)) // global_batch
        if planned == 0:  # the saved epoch is over (less than one global batch left): marked finished, as
            self._start_epoch(epoch)  # at the same layout, so that set_epoch(epoch) keeps it and the next
            self._state.batches_consumed = self._state.num_batches  # pass starts epoch + 1
            return
        self._state.epoch, self._state.segments = epoch, segments
        self._state.batches_consumed, self._state.num_batches = 0, planned

    def __iter__(self) -> Iterator[dict]:
        state = self._state
        if state.batches_consumed >= self.num_batches:  # the last pass finished its epoch
            self._start_epoch(state.epoch + 1)
        self._finished_skips.extend(self._current_skips.values())
        self._current_skips = {}
        config = self.config
        if state.segments:  # the rest of an epoch resumed at another layout
            layout = dataclasses.replace(config.layout, num_batches=state.num_batches)
            config = dataclasses.replace(config, layout=layout,
                                         available=self._segment_available(state.epoch, state.segments))
        dataset = SlotStream(config, state.epoch, state.batches_consumed)
        if self.num_workers == 0:
            batches = iter(dataset)
        else:
            from torch.utils.data import DataLoader

            batches = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                      pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                                      persistent_workers=False,
                                      multiprocessing_context=self.multiprocessing_context))
        for batch in batches:
            if WORKER_ERROR in batch:
                raise batch[WORKER_ERROR]
            self._current_skips[batch.pop("_worker")] = batch.pop("_skips")
            state.batches_consumed += 1
            yield batch

    def totals(self) -> dict:
        """What this loader read over its whole life (every worker, pass and epoch): {"seen", "skipped",
        "repeats", "by_reason", "by_shard", "size_mismatch"} (see accounting.py). Per rank: a trainer
        sums them over ranks (merge_totals) and checks the sum (check_totals)."""
        return merge_totals(self._finished_skips + list(self._current_skips.values()))

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped samples by reason, summed over workers and passes of this loader."""
        return self.totals()["by_reason"]

    @property
    def skipped_by_shard(self) -> dict[str, int]:
        return self.totals()["by_shard"]

    @property
    def num_skipped(self) -> int:
        return self.totals()["skipped"]


def make_loader(sources: ShardSet | ShardSources, **options: object) -> Loader | BalancedLoader:
    """A Loader over `sources` ("dir/{000000..000009}.tar", "a.tar::b.tar", a list of patterns, or a
    list of (pattern, weight) pairs for mode="resampled"). Options:

    batch_size, rank, world_size, num_workers, seed; mode "epoch" (every sample once per epoch, shards
    reshuffled each epoch) or "resampled" (shards drawn with replacement by source weight,
    samples_per_epoch per epoch); task "image_text" (batch "text": token ids from `tokenizer`,
    open_clip's or a transformers one padded to `context_length`, or the raw captions when None) or
    "image_label" (batch "label" from KEY.cls); image_transform (PIL image -> C x H x W tensor, e.g. the
    model's preprocess; default: pixels scaled to [0, 1]); shuffle_buffer (samples per worker);
    max_image_pixels (larger images are skipped unread); max_skip_fraction and skip_check_after (stop
    with DirtyDataError when more than that fraction of the samples seen by a worker was bad, once it
    has seen skip_check_after; local_skip_check=False leaves that check to the caller, on the totals()
    of all ranks, see accounting.py); missing_shards "error" (a shard file that is absent or not a tar
    is a ValueError) or "skip" (its listed samples come back as skips); log_interval_s (at most one
    skip message per worker per interval); pin_memory, prefetch_factor, multiprocessing_context: passed to the DataLoader (workers start anew
    each epoch, so the epoch and resume position reach them without shared state).

    m_per_class (task "image_label", 0 or absent: off): class-balanced batches, m samples of each class
    in every global batch, read by random access through the shards' label indexes (balanced_loader.py;
    a BalancedLoader, with the same methods)."""
    if options.get("m_per_class"):
        from dmlscale.data.balanced_loader import make_balanced_loader

        return make_balanced_loader(sources, **options)
    options.pop("m_per_class", None)
    return Loader(sources, **options)

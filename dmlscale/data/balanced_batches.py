"""Make one rank's class-balanced batch: read its planned samples by byte span, decode, refill bad ones.

A map-style dataset whose item b is the rank's batch b of the epoch (a DataLoader with batch_size=None
and workers makes them in parallel, in order). Each sample is read with one seek (span_reader.py) and
decoded as the streaming loader's image_label path does (decode.py: the same reasons for a bad sample);
its .cls must still hold the indexed label, else the index is stale. A bad sample is replaced by the
next candidate of its group (balanced_plan.refill_candidates) until the group has m good ones; a class
with no readable candidate left is a DirtyDataError naming it, never a hang. Each batch carries what it
read: {"good": [repeat flags], "bad": [(reason, shard path, key)]}, so the loader's accounting needs
no shared state. Augmentations are seeded per batch, from (seed, epoch, rank, batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, get_worker_info

from dmlscale.data.balanced_plan import AUGMENT, EpochRefill, SampleTable, refill_candidates
from dmlscale.data.decode import BadSample, decode_sample
from dmlscale.data.label_index import parse_label
from dmlscale.data.plan import generator
from dmlscale.data.shard_list import MISSING_SHARD
from dmlscale.data.skip_log import DirtyDataError
from dmlscale.data.slot_stream import WORKER_ERROR, pil_to_tensor
from dmlscale.data.span_reader import STALE_INDEX, TarHandles, read_span

ACCOUNT = "_account"  # the batch key carrying what the batch read, popped by the loader


@dataclass(frozen=True)
class BatchSettings:
    seed: int
    rank: int
    m: int
    image_transform: Callable | None
    max_image_pixels: int


class BalancedBatches(Dataset):
    def __init__(self, table: SampleTable, refill: EpochRefill, settings: BatchSettings) -> None:
        self.table, self.refill, self.settings = table, refill, settings
        self.handles = TarHandles()

    def __len__(self) -> int:
        return len(self.refill.rows_NB)

    def __getitem__(self, batch: int) -> dict:
        if get_worker_info() is None:
            return self._batch(batch)
        try:
            return self._batch(batch)
        except ValueError as error:  # bad data in a DataLoader worker: the loader raises it as is
            return {WORKER_ERROR: error}

    def _load(self, sample: int) -> tuple[str, str | None, tuple | None]:
        """(key, None, (PIL image, label)) of id `sample`, or (key, the reason it cannot be used, None);
        a key the tar no longer gives is "#position"."""
        table = self.table
        fallback_key = f"#{table.position_I[sample]}"
        try:
            handle = self.handles.get(table.paths[table.shard_I[sample]])
        except OSError:
            return fallback_key, MISSING_SHARD, None
        start, end = table.span_I2[sample].tolist()
        key, fields, problem = read_span(handle, start, end)
        key = key or fallback_key
        if problem is None and "cls" in fields and parse_label(fields["cls"]) != int(table.label_I[sample]):
            problem = STALE_INDEX
        if problem is not None:
            return key, problem, None
        try:
            decoded = decode_sample(fields, task="image_label", max_image_pixels=self.settings.max_image_pixels)
        except BadSample as bad:
            return key, bad.reason, None
        return key, None, decoded

    def _try(self, sample: int, repeat: bool, good: list, bad: list) -> None:
        key, reason, decoded = self._load(sample)
        if reason is None:
            good.append((key, *decoded, repeat))
        else:
            bad.append((reason, self.table.paths[self.table.shard_I[sample]], key))

    def _batch(self, batch: int) -> dict:
        table, m = self.table, self.settings.m
        row = self.refill.rows_NB[batch]
        chosen, bad = [], []
        for group in range(len(row) // m):
            group_ids = row[group * m:(group + 1) * m]
            good = []  # (key, image, label, repeat)
            for sample in group_ids.tolist():
                self._try(sample, False, good, bad)
            if len(good) < m:
                for sample, repeat in refill_candidates(table, self.refill, seed=self.settings.seed, batch=batch,
                                                        group=group, group_ids=group_ids):
                    self._try(sample, repeat, good, bad)
                    if len(good) == m:
                        break
                if len(good) < m:
                    label = int(table.label_I[group_ids[0]])
                    reasons = sorted({reason for reason, _, _ in bad})
                    raise DirtyDataError(
                        f"class {label} has fewer than m={m} readable samples left for batch {batch} of epoch "
                        f"{self.refill.epoch} (rank {self.settings.rank}; bad: {reasons}, e.g. in {bad[-1][1]}); "
                        f"fix or replace the shards")
            chosen += good
        return self._collate(chosen, batch, {"good": [repeat for *_, repeat in chosen], "bad": bad})

    def _collate(self, chosen: list, batch: int, account: dict) -> dict:
        settings = self.settings
        transform = settings.image_transform or pil_to_tensor
        with torch.random.fork_rng(devices=[]):  # augmentations seeded per batch, global RNG untouched
            torch.manual_seed(int(generator(settings.seed, self.refill.epoch, AUGMENT, settings.rank, batch)
                                  .integers(2**63)))
            images = torch.stack([transform(image) for _, image, _, _ in chosen])
        return {"image": images, "label": torch.tensor([label for _, _, label, _ in chosen], dtype=torch.long),
                "key": [key for key, _, _, _ in chosen], ACCOUNT: account}

    def close(self) -> None:
        self.handles.close()

"""The class-balanced plan over labelled shards: which samples each batch holds, and which may replace a bad one.

Legend: I labelled samples (ids), C classes, N batches per epoch, B samples per rank batch, Q = B / m
groups per rank batch, G groups in an epoch.

`SampleTable` holds every labelled sample of the shard set as flat arrays (shard, position, byte span,
label), from the shards' label indexes; an id is a position in these arrays, in shard order. The epoch
plan over ids is DistributedMPerClassSampler's, a function of (seed, epoch) and the labels alone, so
every rank computes it alike.

Refill: a bad sample is replaced by another of its class, so the batch keeps m of each of its classes.
The epoch's unplanned samples of class c (its leftovers) are shuffled by (seed, epoch) and dealt to the
class's groups in plan order: group k of g takes leftovers k, k + g, ...; no other group takes those, so
a refill from them keeps every sample at most once per epoch. A group past its share takes other
members of its class in an order seeded by (seed, epoch, global batch, group), which may repeat a sample
of the epoch: those count as repeats. All of it depends on (seed, epoch, global batch, group) and the
data only, so a batch is the same after a resume, with any worker count, and at another world size with
the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dmlscale.data.label_index import load_index
from dmlscale.data.plan import generator
from dmlscale.data.shard_list import ShardSet

REFILL, AUGMENT = 3, 4  # generator purposes of their own (plan.py uses 0-2)


@dataclass(frozen=True)
class SampleTable:
    paths: tuple[str, ...]  # by shard number in the ShardSet
    shard_I: np.ndarray
    position_I: np.ndarray  # index of the sample in its tar
    span_I2: np.ndarray  # [start, end) bytes in the tar
    label_I: np.ndarray
    class_I: np.ndarray  # 0 .. C-1, classes in label order
    member_order: np.ndarray  # ids sorted by class (ascending ids within a class)
    member_bounds: np.ndarray  # (C + 1,): class c's members are member_order[bounds[c]:bounds[c + 1]]

    def members(self, class_index: int) -> np.ndarray:
        return self.member_order[self.member_bounds[class_index]:self.member_bounds[class_index + 1]]


def build_table(shard_set: ShardSet, *, cache_index: bool = True) -> tuple[SampleTable, dict]:
    """(table, report): report = {"unlabelled": samples left out for want of a label, "size_mismatch":
    {path: [listed, indexed]} for shards whose index counts other than the shard list}."""
    shards, positions, spans, labels = [], [], [], []
    unlabelled, mismatch = 0, {}
    for number, shard in enumerate(shard_set.shards):
        if shard.problem is not None:  # missing or not a tar: list_shards warned; nothing to plan
            continue
        index = load_index(shard.path, cache=cache_index)
        count = len(index.keys)
        if count != shard.num_samples:
            mismatch[shard.path] = [shard.num_samples, count]
        labelled = np.fromiter((label is not None for label in index.labels), dtype=bool, count=count)
        unlabelled += count - int(labelled.sum())
        labels.append(np.fromiter((label or 0 for label in index.labels), dtype=np.int64, count=count)[labelled])
        spans.append(np.asarray(index.spans, dtype=np.int64).reshape(count, 2)[labelled])
        positions.append(np.flatnonzero(labelled))
        shards.append(np.full(len(positions[-1]), number, dtype=np.int32))
    label_I = _joined(labels, np.int64)
    classes, class_I = np.unique(label_I, return_inverse=True)
    member_order = np.argsort(class_I, kind="stable")
    member_bounds = np.concatenate([[0], np.cumsum(np.bincount(class_I, minlength=len(classes)))])
    table = SampleTable(tuple(shard.path for shard in shard_set.shards), _joined(shards, np.int32),
                        _joined(positions, np.int64), _joined(spans, np.int64, (0, 2)), label_I,
                        class_I.astype(np.int64), member_order, member_bounds)
    return table, {"unlabelled": unlabelled, "size_mismatch": mismatch}


def _joined(parts: list[np.ndarray], dtype: type, empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(empty_shape, dtype=dtype)


@dataclass(frozen=True)
class EpochRefill:
    """One rank's batches of an epoch with what each group may refill from."""

    epoch: int
    rows_NB: np.ndarray  # this rank's ids, batch by batch
    first_group: int  # global group column of this rank's first group
    occurrence_NQ: np.ndarray  # each local group's number among its class's groups this epoch
    groups_C: np.ndarray  # groups of each class this epoch
    leftover_order: np.ndarray  # unplanned ids by class, shuffled within a class
    leftover_bounds: np.ndarray  # (C + 1,)


def epoch_refill(table: SampleTable, plan_NK: np.ndarray, *, m: int, rank: int, batch_size: int, seed: int,
                 epoch: int) -> EpochRefill:
    """The refill tables of `epoch` for `rank`, from the global plan (num_batches, global batch)."""
    num_classes = len(table.member_bounds) - 1
    class_NG = table.class_I[plan_NK[:, ::m]]  # the class of every group, batch by batch
    class_G = class_NG.reshape(-1)
    order = np.argsort(class_G, kind="stable")  # groups by class, in plan order within a class
    groups_C = np.bincount(class_G, minlength=num_classes)
    occurrence_G = np.empty(len(class_G), dtype=np.int64)
    occurrence_G[order] = np.arange(len(class_G)) - np.repeat(np.cumsum(groups_C) - groups_C, groups_C)
    planned = np.zeros(len(table.label_I), dtype=bool)
    planned[plan_NK.reshape(-1)] = True
    leftovers = np.flatnonzero(~planned)
    keys = generator(seed, epoch, REFILL).random(len(leftovers))
    leftovers = leftovers[np.lexsort((keys, table.class_I[leftovers]))]
    leftover_bounds = np.concatenate([[0], np.cumsum(np.bincount(table.class_I[leftovers], minlength=num_classes))])
    per_rank, start = batch_size // m, rank * batch_size
    occurrence_NQ = occurrence_G.reshape(class_NG.shape)[:, rank * per_rank:(rank + 1) * per_rank]
    return EpochRefill(epoch, np.ascontiguousarray(plan_NK[:, start:start + batch_size]), rank * per_rank,
                       np.ascontiguousarray(occurrence_NQ), groups_C, leftovers, leftover_bounds)


def refill_candidates(table: SampleTable, refill: EpochRefill, *, seed: int, batch: int, group: int,
                      group_ids: np.ndarray) -> Iterator[tuple[int, bool]]:
    """(id, repeat) in the order local group `group` of `batch` tries them: its share of its class's
    leftovers (fresh), then the class's other members in a seeded order (repeats)."""
    class_index = int(table.class_I[group_ids[0]])
    occurrence = int(refill.occurrence_NQ[batch, group])
    low, high = refill.leftover_bounds[class_index], refill.leftover_bounds[class_index + 1]
    share = refill.leftover_order[low:high][occurrence::int(refill.groups_C[class_index])]
    for sample in share.tolist():
        yield sample, False
    members = table.members(class_index)
    rng = generator(seed, refill.epoch, REFILL, batch, refill.first_group + group)
    taken = set(group_ids.tolist()) | set(share.tolist())
    for sample in members[rng.permutation(len(members))].tolist():
        if sample not in taken:
            yield sample, True

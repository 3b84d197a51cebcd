"""DistributedMPerClassSampler: m samples per class in every global batch, each sample at most once per
epoch, planned on every rank alike from (seed, epoch) without communication, exactly resumable.

A global batch is world_size x batch_size samples: K = world_size x batch_size / m distinct classes with
m samples each; rank r takes the r-th run of batch_size, so each local batch is m samples of each of
batch_size / m classes too. An epoch is one pass of `epoch_plan.plan_epoch`: each sample at most once;
a class with n samples gives floor(n / m) groups of m (its n mod m leftovers, a fresh choice each epoch,
wait), a class with fewer than m samples is never drawn (a warning names how many), and a class with more
groups than there are batches gives only one group per batch. Every sample appears exactly once per epoch
when every class size is a multiple of m and the group count is a multiple of K with no class holding
more than one group per batch; `num_dropped` says how many samples an epoch leaves out otherwise.
Every rank yields `num_batches` batches (equal on every rank).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from dmlscale.samplers.checks import check_int, integer_labels
from dmlscale.samplers.epoch_plan import num_batches, plan_epoch

OWNER = "DistributedMPerClassSampler"
STATE_LAYOUT = ("seed", "m", "global_batch_size", "num_samples", "labels_crc32")


class DistributedMPerClassSampler(Sampler[int]):
    """This rank's indices, batch after batch (use it with DataLoader(batch_size=batch_size, sampler=it))."""

    def __init__(self, labels: object, m: int, batch_size: int, *, rank: int, world_size: int,
                 seed: int = 0) -> None:
        labels_N = integer_labels(OWNER, labels, ndim=1)
        self.m_per_class = check_int(OWNER, "m", m, minimum=1)
        self.batch_size = check_int(OWNER, "batch_size", batch_size, minimum=1)
        self.world_size = check_int(OWNER, "world_size", world_size, minimum=1)
        self.rank = check_int(OWNER, "rank", rank, minimum=0)
        self.seed = check_int(OWNER, "seed", seed, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"{OWNER}: rank must be < world_size, got rank={rank}, world_size={world_size}")
        if self.batch_size % self.m_per_class:
            raise ValueError(f"{OWNER}: batch_size must be a multiple of m, got batch_size={batch_size}, m={m}")
        self.global_batch_size = self.world_size * self.batch_size
        self.classes_per_batch = self.global_batch_size // self.m_per_class
        classes, self._class_of_N = np.unique(labels_N, return_inverse=True)
        self._num_classes = len(classes)
        groups_C = np.bincount(self._class_of_N, minlength=len(classes)) // self.m_per_class
        eligible = int((groups_C > 0).sum())
        if eligible < self.classes_per_batch:
            raise ValueError(
                f"{OWNER}: a global batch of world_size x batch_size = {self.world_size} x {self.batch_size} samples "
                f"needs {self.classes_per_batch} classes with at least m={self.m_per_class} samples, "
                f"labels have {eligible} such classes (of {len(classes)})")
        if eligible < len(classes):
            warnings.warn(f"{OWNER}: {len(classes) - eligible} of {len(classes)} classes have fewer than "
                          f"m={self.m_per_class} samples and are never drawn", stacklevel=2)
        self.num_batches = num_batches(groups_C, self.classes_per_batch)
        self.num_dropped = len(labels_N) - self.num_batches * self.global_batch_size
        self._layout = {"seed": self.seed, "m": self.m_per_class, "global_batch_size": self.global_batch_size,
                        "num_samples": len(labels_N),
                        "labels_crc32": zlib.crc32(np.ascontiguousarray(labels_N).tobytes())}
        self.epoch = 0
        self._resume_from = 0  # batches the next iteration skips (set by load_state_dict)
        self._consumed = 0  # batches of self.epoch handed out
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, this rank's (N, batch_size) indices)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Plan the next iteration from (seed, epoch); the epoch of a loaded state keeps its position."""
        epoch = check_int(OWNER, "epoch", epoch, minimum=0)
        if epoch != self.epoch:
            self.epoch, self._resume_from, self._consumed = epoch, 0, 0

    def global_plan(self, epoch: int) -> np.ndarray:
        """Every rank's (num_batches, world_size x batch_size) indices for `epoch`: row b is global batch b,
        rank r's slice its columns r x batch_size onward; the same on every rank and call."""
        check_int(OWNER, "epoch", epoch, minimum=0)
        rng = np.random.default_rng([self.seed, epoch])
        return plan_epoch(self._class_of_N, self._num_classes, self.m_per_class, self.classes_per_batch, rng)

    def local_plan(self, epoch: int) -> np.ndarray:
        """This rank's (num_batches, batch_size) indices for `epoch`, the same on every call and rank count
        with the same global batch."""
        if self._plan is None or self._plan[0] != epoch:
            plan_NKm = self.global_plan(epoch)
            start = self.rank * self.batch_size
            self._plan = (epoch, np.ascontiguousarray(plan_NKm[:, start:start + self.batch_size]))
        return self._plan[1]

    def __iter__(self) -> Iterator[int]:
        plan_NB = self.local_plan(self.epoch)
        start, self._resume_from = self._resume_from, 0
        self._consumed = start
        return self._indices(plan_NB, start)

    def _indices(self, plan_NB: np.ndarray, start: int) -> Iterator[int]:
        for batch in range(start, len(plan_NB)):
            row = plan_NB[batch].tolist()
            yield from row[:-1]
            self._consumed = batch + 1  # counted once the batch's last index is taken
            yield row[-1]

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """{"epoch", "batches_consumed", and the layout it was made for}. The count is the batches this
        sampler handed out in the epoch; a DataLoader with workers takes batches ahead of the loop, so then
        pass the loop's own count as `batches_consumed`."""
        consumed = self._consumed if batches_consumed is None else batches_consumed
        check_int(OWNER, "batches_consumed", consumed, minimum=0)
        if consumed > self.num_batches:
            raise ValueError(f"{OWNER}: batches_consumed must be <= num_batches={self.num_batches}, got {consumed}")
        return {"epoch": self.epoch, "batches_consumed": int(consumed), **self._layout}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: the next iteration yields the rest of its epoch. A state from another
        world size with the same global batch size continues the same plan."""
        missing = [key for key in ("epoch", "batches_consumed", *STATE_LAYOUT) if key not in state]
        if missing:
            raise ValueError(f"{OWNER}: state lacks {missing}, got keys {sorted(state)}")
        changed = {key: (state[key], self._layout[key]) for key in STATE_LAYOUT if state[key] != self._layout[key]}
        if changed:
            raise ValueError(f"{OWNER}: state was made for another layout; (state, this sampler): {changed}")
        epoch = check_int(OWNER, "state['epoch']", state["epoch"], minimum=0)
        consumed = check_int(OWNER, "state['batches_consumed']", state["batches_consumed"], minimum=0)
        if consumed > self.num_batches:
            raise ValueError(f"{OWNER}: state['batches_consumed'] must be <= num_batches={self.num_batches}, "
                             f"got {consumed}")
        self.epoch, self._resume_from, self._consumed = epoch, consumed, consumed

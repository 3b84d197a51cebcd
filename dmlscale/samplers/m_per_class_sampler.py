"""MPerClassSampler: PML's m-per-class sampler (same name, signature, defaults, length and guarantees).

Guarantees, as in PML: with `batch_size`, every run of `batch_size` consecutive indices (so every DataLoader
batch of that size) holds m samples of each of batch_size / m distinct classes; without it, every run of
m indices is one class and every m x num_classes run covers each class once. The m samples of a class are
distinct when the class has at least m samples (else drawn with replacement). Each block of classes is a
fresh draw, so a sample can appear again before others have appeared; for every-sample-once epochs and
many ranks see DistributedMPerClassSampler.

Differences from PML: the random stream is not PML's (PML draws from its global numpy generator); with
`seed=None` each iteration draws a fresh seed from torch's global generator (as torch's RandomSampler
does), with an int `seed` the stream is fixed by (seed, epoch) (`set_epoch`). Iteration yields exactly
len() indices (PML yields a whole pass of m x num_classes when that exceeds length_before_new_iter).
Labels must be integers, and bad arguments raise ValueError naming them (PML: AssertionError or
ZeroDivisionError, and m < 0 without batch_size is accepted).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from dmlscale.samplers.checks import check_int, integer_labels

OWNER = "MPerClassSampler"


class MPerClassSampler(Sampler[int]):
    """Yields dataset indices, m per class in each block (see the module docstring for the guarantees)."""

    def __init__(self, labels: object, m: int, batch_size: int | None = None,
                 length_before_new_iter: int = 100000, *, seed: int | None = None) -> None:
        labels_N = integer_labels(OWNER, labels, ndim=1)
        self.m_per_class = check_int(OWNER, "m", m, minimum=1)
        self.batch_size = None if batch_size is None else check_int(OWNER, "batch_size", batch_size, minimum=1)
        length = check_int(OWNER, "length_before_new_iter", length_before_new_iter, minimum=1)
        self.seed = None if seed is None else check_int(OWNER, "seed", seed, minimum=0)
        classes, members = _members_by_class(labels_N)
        self.labels = classes.tolist()
        self.labels_to_indices = dict(zip(self.labels, members))
        self.length_of_single_pass = self.m_per_class * len(self.labels)
        if self.batch_size is None:
            if self.length_of_single_pass < length:
                length -= length % self.length_of_single_pass
        else:
            self._check_batch_size(length)
            length -= length % self.batch_size
        self.list_size = length
        self.epoch = 0

    def _check_batch_size(self, length: int) -> None:
        m, batch_size = self.m_per_class, self.batch_size
        if length < batch_size:
            raise ValueError(f"{OWNER}: length_before_new_iter must be >= batch_size, got "
                             f"length_before_new_iter={length}, batch_size={batch_size}")
        if batch_size % m:
            raise ValueError(f"{OWNER}: batch_size must be a multiple of m, got batch_size={batch_size}, m={m}")
        if batch_size // m > len(self.labels):
            raise ValueError(f"{OWNER}: batch_size / m = {batch_size}/{m} = {batch_size // m} classes per batch, "
                             f"but labels have only {len(self.labels)} classes")

    def __len__(self) -> int:
        return self.list_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose stream the next iteration yields (only matters with an int seed)."""
        self.epoch = check_int(OWNER, "epoch", epoch, minimum=0)

    def _generator(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.empty((), dtype=torch.int64).random_().item()) & (2**63 - 1))
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self) -> Iterator[int]:
        rng = self._generator()
        block = self.length_of_single_pass if self.batch_size is None else self.batch_size
        classes_per_block = block // self.m_per_class
        members = [self.labels_to_indices[label] for label in self.labels]
        num_blocks = -(-self.list_size // block)
        indices = np.empty(num_blocks * block, dtype=np.int64)
        for b in range(num_blocks):
            chosen = rng.permutation(len(members))[:classes_per_block]
            for j, c in enumerate(chosen):
                pool = members[c]
                start = b * block + j * self.m_per_class
                pick = rng.choice(len(pool), size=self.m_per_class, replace=len(pool) < self.m_per_class)
                indices[start:start + self.m_per_class] = pool[pick]
        return iter(indices[:self.list_size].tolist())

    def calculate_num_iters(self) -> int:
        """Blocks per iteration (PML's name): batches with batch_size, else passes over all classes."""
        block = self.length_of_single_pass if self.batch_size is None else self.batch_size
        return self.list_size // block if block < self.list_size else 1


def _members_by_class(labels_N: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted distinct labels, for each of them the ascending indices holding it)."""
    classes, class_of_N = np.unique(labels_N, return_inverse=True)
    order = np.argsort(class_of_N, kind="stable")
    bounds = np.cumsum(np.bincount(class_of_N, minlength=len(classes)))[:-1]
    return classes, np.split(order, bounds)

"""HierarchicalSampler: PML's batch sampler over two label levels (same name, signature, defaults, len and
batch rules). For every combination of `super_classes_per_batch` super labels (outer level) it makes
`batches_per_super_tuple` batches; each super label fills batch_size / super_classes_per_batch places with
whole classes (inner level) in a random order, `samples_per_class` samples each (all of the class with
"all"; with replacement only when the class is smaller), skipping a class that no longer fits. Batches
come in a random order and their samples shuffled. len() = C(num super labels, super_classes_per_batch)
x batches_per_super_tuple.

Differences from PML: the random stream is not PML's (seed=None draws from torch's global generator each
iteration, an int seed fixes it by (seed, epoch)); labels must be 2-D integers; bad arguments raise
ValueError naming them (PML: AssertionError or IndexError), and so do fewer super labels than
super_classes_per_batch (PML builds an empty sampler).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from dmlscale.samplers.checks import check_int, integer_labels

OWNER = "HierarchicalSampler"


class HierarchicalSampler(Sampler[list[int]]):
    """Yields batches (lists of indices): use it as DataLoader(batch_sampler=...)."""

    def __init__(self, labels: object, batch_size: int, samples_per_class: int | str,
                 batches_per_super_tuple: int = 4, super_classes_per_batch: int = 2, inner_label: int = 0,
                 outer_label: int = 1, *, seed: int | None = None) -> None:
        labels_NL = integer_labels(OWNER, labels, ndim=2)
        self.batch_size = check_int(OWNER, "batch_size", batch_size, minimum=1)
        self.batches_per_super_tuple = check_int(OWNER, "batches_per_super_tuple", batches_per_super_tuple, minimum=1)
        self.super_classes_per_batch = check_int(OWNER, "super_classes_per_batch", super_classes_per_batch, minimum=1)
        self.seed = None if seed is None else check_int(OWNER, "seed", seed, minimum=0)
        for name, column in (("inner_label", inner_label), ("outer_label", outer_label)):
            check_int(OWNER, name, column, minimum=0)
            if column >= labels_NL.shape[1]:
                raise ValueError(f"{OWNER}: {name} must be a column of labels (< {labels_NL.shape[1]}), got {column}")
        if self.batch_size % self.super_classes_per_batch:
            raise ValueError(f"{OWNER}: batch_size must be a multiple of super_classes_per_batch, got "
                             f"batch_size={batch_size}, super_classes_per_batch={super_classes_per_batch}")
        self.sub_batch_len = self.batch_size // self.super_classes_per_batch
        if samples_per_class != "all":
            if isinstance(samples_per_class, str):
                raise ValueError(f"{OWNER}: samples_per_class must be 'all' or a positive int, got {samples_per_class!r}")
            samples_per_class = check_int(OWNER, "samples_per_class", samples_per_class, minimum=1)
            if self.sub_batch_len % samples_per_class:
                raise ValueError(f"{OWNER}: batch_size / super_classes_per_batch = {self.sub_batch_len} must be a "
                                 f"multiple of samples_per_class, got samples_per_class={samples_per_class}")
        self.samples_per_class = samples_per_class
        # super label -> class -> indices, in order of first appearance (PML's order before its shuffles)
        self.super_image_lists: dict[int, dict[int, np.ndarray]] = {}
        for index, (outer, inner) in enumerate(zip(labels_NL[:, outer_label].tolist(), labels_NL[:, inner_label].tolist())):
            self.super_image_lists.setdefault(outer, {}).setdefault(inner, []).append(index)
        for classes in self.super_image_lists.values():
            for inner, indices in classes.items():
                classes[inner] = np.array(indices, dtype=np.int64)
        num_super = len(self.super_image_lists)
        if num_super < self.super_classes_per_batch:
            raise ValueError(f"{OWNER}: super_classes_per_batch must be <= the number of super labels "
                             f"(column {outer_label}: {num_super}), got {super_classes_per_batch}")
        self.super_pairs = list(itertools.combinations(sorted(self.super_image_lists), self.super_classes_per_batch))
        self.epoch = 0

    def __len__(self) -> int:
        return math.comb(len(self.super_image_lists), self.super_classes_per_batch) * self.batches_per_super_tuple

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (only matters with an int seed)."""
        self.epoch = check_int(OWNER, "epoch", epoch, minimum=0)

    def _generator(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.empty((), dtype=torch.int64).random_().item()) & (2**63 - 1))
        return np.random.default_rng([self.seed, self.epoch])

    def _sub_batch(self, classes: dict[int, np.ndarray], rng: np.random.Generator) -> list[int]:
        sub_batch: list[int] = []
        pools = list(classes.values())
        for c in rng.permutation(len(pools)):
            if len(sub_batch) >= self.sub_batch_len:
                break
            pool = pools[c]
            wanted = len(pool) if self.samples_per_class == "all" else self.samples_per_class
            if len(sub_batch) + wanted > self.sub_batch_len:
                continue
            sub_batch += pool[rng.choice(len(pool), size=wanted, replace=len(pool) < wanted)].tolist()
        return sub_batch

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._generator()
        batches = []
        for combination in self.super_pairs:
            for _ in range(self.batches_per_super_tuple):
                batch = [i for outer in combination for i in self._sub_batch(self.super_image_lists[outer], rng)]
                batches.append([batch[j] for j in rng.permutation(len(batch))])
        return iter([batches[b] for b in rng.permutation(len(batches))])

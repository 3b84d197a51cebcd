"""FixedSetOfTriplets: PML's sampler that draws num_triplets (anchor, positive, negative) index triplets once,
at construction, and yields them flattened (a, p, n, a, p, n, ...) in a new row order on every iteration.

Each triplet: two distinct classes (anchor class, negative class), two members of the anchor class (distinct
when it has two; a class of one sample gives a == p, as in PML), one member of the negative class.

Randomness: a numpy RandomState of the sampler's own, seeded by `seed`, making PML's calls in PML's order, so
`FixedSetOfTriplets(labels, n, seed=s)` draws the triplets, and yields the orders, of PML's sampler after
`numpy.random.seed(s)` (PML draws from numpy's global generator). `seed=None` seeds it from torch's global
generator. Labels must be integers; bad arguments raise ValueError naming them (PML: AssertionError, or
numpy's error for a single class).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from dmlscale.samplers.checks import check_int, integer_labels

OWNER = "FixedSetOfTriplets"


def labels_to_indices(labels_N: np.ndarray) -> dict[int, np.ndarray]:
    """Each label (in order of first appearance, as PML's dict) -> the ascending indices holding it."""
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels_N.tolist()):
        members.setdefault(label, []).append(index)
    return {label: np.array(rows, dtype=int) for label, rows in members.items()}


class FixedSetOfTriplets(Sampler[int]):
    """Yields the indices of a fixed set of triplets, 3 per triplet (see the module docstring)."""

    def __init__(self, labels: object, num_triplets: int, *, seed: int | None = None) -> None:
        labels_N = integer_labels(OWNER, labels, ndim=1)
        self.num_triplets = check_int(OWNER, "num_triplets", num_triplets, minimum=1)
        self.labels_to_indices = labels_to_indices(labels_N)
        if len(self.labels_to_indices) < 2:
            raise ValueError(f"{OWNER}: labels must hold at least 2 classes (an anchor and a negative class), "
                             f"got {len(self.labels_to_indices)}")
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item()) % 2**32
        self.seed = check_int(OWNER, "seed", seed, minimum=0)
        self.rng = np.random.RandomState(self.seed)
        self.create_fixed_set_of_triplets()

    def __len__(self) -> int:
        return self.fixed_set_of_triplets.shape[0] * 3

    def __iter__(self) -> Iterator[int]:
        self.rng.shuffle(self.fixed_set_of_triplets)  # in place: each iteration reorders the last order
        return iter(self.fixed_set_of_triplets.flatten().tolist())

    def create_fixed_set_of_triplets(self) -> None:
        """fixed_set_of_triplets: num_triplets x 3 array of (anchor, positive, negative) indices."""
        class_list = list(self.labels_to_indices)
        triplets_T3 = np.full((self.num_triplets, 3), -1, dtype=int)
        for t in range(self.num_triplets):
            anchor_class, negative_class = self.rng.choice(class_list, size=2, replace=False)
            anchor_pool = self.labels_to_indices[int(anchor_class)]
            negative_pool = self.labels_to_indices[int(negative_class)]
            anchor, positive = self.rng.choice(anchor_pool, size=2, replace=len(anchor_pool) < 2)
            negative = self.rng.choice(negative_pool, replace=False)
            triplets_T3[t] = (anchor, positive, negative)
        self.fixed_set_of_triplets = triplets_T3

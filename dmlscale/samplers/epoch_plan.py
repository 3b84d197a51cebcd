"""The class-balanced epoch plan: batches of K distinct classes x m samples, each sample at most once.

Legend: C classes, G groups (m samples of one class), N batches, K classes per batch (global batch / m).

A class with n samples makes floor(n / m) groups per epoch from a fresh shuffle of its samples; its n mod m
leftover samples sit the epoch out (different ones each epoch). N batches of K distinct classes exist iff
sum_c min(g_c, N) >= N * K, so the plan uses the largest such N (`num_batches`), taking at most N groups of
a class and dropping the surplus groups at random. The batches are then filled one at a time: a class whose
remaining groups equal the remaining batches must be in this batch, the rest are drawn with probability
growing with their remaining groups (weighted sampling without replacement, Efraimidis-Spirakis keys);
this keeps "counts <= remaining batches, sum = remaining batches x K" true, so the fill never gets stuck.
Everything is a function of the generator, so every rank that seeds it alike computes the same plan.
"""

from __future__ import annotations

import numpy as np


def num_batches(groups_per_class_C: np.ndarray, classes_per_batch: int) -> int:
    """The largest N with sum_c min(g_c, N) >= N * K (0 when fewer than K classes have a group)."""
    low, high = 0, int(groups_per_class_C.sum()) // classes_per_batch
    while low < high:  # the slack sum_c min(g_c, N) - N K is concave with value 0 at N = 0
        middle = (low + high + 1) // 2
        if int(np.minimum(groups_per_class_C, middle).sum()) >= middle * classes_per_batch:
            low = middle
        else:
            high = middle - 1
    return low


def plan_epoch(class_of_N: np.ndarray, num_classes: int, m: int, classes_per_batch: int,
               rng: np.random.Generator) -> np.ndarray:
    """(N, K * m) dataset indices for samples of classes `class_of_N` (0 .. num_classes - 1): row b is batch
    b, K runs of m samples of one class each, K distinct classes per row, no index twice in the plan."""
    K = classes_per_batch
    size_C = np.bincount(class_of_N, minlength=num_classes)
    groups_C = size_C // m
    N = num_batches(groups_C, K)
    if N == 0:
        return np.empty((0, K * m), dtype=np.int64)
    # a fresh shuffle of each class (sort by class, then a random 32-bit key), cut into groups; keep at most
    # N groups a class, then drop the surplus groups at random
    keys_N = (class_of_N.astype(np.int64) << 32) | rng.integers(0, 2**32, len(class_of_N), dtype=np.int64)
    order = np.argsort(keys_N, kind="stable")
    position = np.arange(len(order)) - np.repeat(np.cumsum(size_C) - size_C, size_C)
    used_C = np.minimum(groups_C, N)
    samples_Gm = order[position < np.repeat(used_C * m, size_C)].reshape(-1, m)
    class_G = np.repeat(np.arange(num_classes), used_C)
    keep_G = np.ones(len(class_G), dtype=bool)
    keep_G[rng.choice(len(class_G), size=len(class_G) - N * K, replace=False)] = False
    samples_Gm, class_G = samples_Gm[keep_G], class_G[keep_G]
    remaining_C = np.bincount(class_G, minlength=num_classes)

    classes_NK = np.empty((N, K), dtype=np.int64)
    for batch in range(N):
        left = N - batch
        forced = np.flatnonzero(remaining_C == left)
        open_ = np.flatnonzero((remaining_C > 0) & (remaining_C < left))
        need = K - len(forced)
        keys = np.log(rng.random(len(open_))) / remaining_C[open_]  # larger key: drawn first
        drawn = open_[np.argpartition(-keys, need - 1)[:need]] if need else open_[:0]
        chosen = rng.permutation(np.concatenate([forced, drawn]))
        classes_NK[batch] = chosen
        remaining_C[chosen] -= 1
    assert not remaining_C.any()

    # kept groups are sorted by class and so are the slots after a stable sort: the k-th slot of class c
    # (in plan order) takes the k-th kept group of c
    group_of_slot = np.empty(N * K, dtype=np.int64)
    group_of_slot[np.argsort(classes_NK.reshape(-1), kind="stable")] = np.arange(N * K)
    plan_NKm = samples_Gm[group_of_slot].reshape(N, K * m)
    return plan_NKm[rng.permutation(N)]

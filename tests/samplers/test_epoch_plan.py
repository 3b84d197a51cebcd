"""The epoch plan alone: its batch count is the largest feasible one (brute force), and every plan has K
distinct classes x m samples per batch with no sample twice, for skewed class sizes."""

import itertools
from collections import Counter

import numpy as np
import pytest

from dmlscale.samplers.epoch_plan import num_batches, plan_epoch


def feasible(groups, K, N):
    """Can N batches of K distinct classes be made? (brute force over which classes fill each batch)"""
    def fill(counts, left):
        if left == 0:
            return True
        live = [c for c in range(len(counts)) if counts[c]]
        for chosen in itertools.combinations(live, K):
            rest = list(counts)
            for c in chosen:
                rest[c] -= 1
            if fill(rest, left - 1):
                return True
        return False
    return fill(list(groups), N)


@pytest.mark.parametrize("groups, K", [([1, 1, 1], 2), ([3, 1, 1], 2), ([5, 1, 1, 1], 3), ([2, 2, 2, 2], 3),
                                       ([4, 0, 1, 2], 2), ([3, 3, 1], 3), ([6, 1], 2), ([2, 2, 1, 1, 1], 4)])
def test_num_batches_is_the_largest_feasible_count(groups, K):
    N = num_batches(np.array(groups), K)
    assert feasible(groups, K, N)
    assert not feasible(groups, K, N + 1)


@pytest.mark.parametrize("seed", range(12))
def test_plan_has_k_distinct_classes_of_m_and_no_repeats(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, 30) * (rng.random(30) < 0.8) + 1
    sizes[0] = 300  # one class far larger than the rest
    labels = rng.permutation(np.repeat(np.arange(30), sizes))
    m, K = int(rng.integers(1, 5)), int(rng.integers(2, 9))
    plan = plan_epoch(labels, 30, m, K, np.random.default_rng([seed, 0]))
    N = num_batches(np.bincount(labels, minlength=30) // m, K)
    assert plan.shape == (N, K * m) and N > 0
    assert len(set(plan.reshape(-1).tolist())) == plan.size
    for row in plan:
        runs = labels[row].reshape(K, m)
        assert (runs == runs[:, :1]).all() and len(set(runs[:, 0].tolist())) == K
    assert Counter(labels[plan[:, 0]].tolist())[0] <= N  # the big class is at most once per batch
    assert np.array_equal(plan, plan_epoch(labels, 30, m, K, np.random.default_rng([seed, 0])))

"""FixedSetOfTriplets: PML's triplets and orders under the same seed (PML after numpy.random.seed), valid
triplets, a new order of the same set on each iteration, and named errors."""

import numpy as np
import pytest
import torch

from dmlscale.samplers import FixedSetOfTriplets

pml_samplers = pytest.importorskip("pytorch_metric_learning.samplers")


def labels_with_a_singleton(seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 6, 50)
    labels[7] = 42  # a class of one sample: its triplets have anchor == positive, as in PML
    return labels


@pytest.mark.parametrize("seed", [0, 11])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_same_triplets_and_orders_as_pml(seed, as_tensor):
    labels = labels_with_a_singleton(seed)
    given = torch.as_tensor(labels) if as_tensor else labels
    np.random.seed(seed)
    pml = pml_samplers.FixedSetOfTriplets(given, 40)
    ours = FixedSetOfTriplets(given, 40, seed=seed)
    assert np.array_equal(ours.fixed_set_of_triplets, pml.fixed_set_of_triplets)
    for _ in range(3):
        assert list(ours) == list(pml)
    assert len(ours) == len(pml) == 120


def test_triplets_are_valid_and_iterations_reorder_the_same_set():
    labels = labels_with_a_singleton(3)
    sampler = FixedSetOfTriplets(labels, 200, seed=5)
    triplets = sampler.fixed_set_of_triplets.copy()
    a, p, n = triplets.T
    assert np.all(labels[a] == labels[p]) and np.all(labels[a] != labels[n])
    distinct_ok = (a != p) | (np.bincount(labels)[labels[a]] == 1)
    assert np.all(distinct_ok), "anchor and positive coincide only in a class of one sample"
    first, second = np.array(list(sampler)).reshape(-1, 3), np.array(list(sampler)).reshape(-1, 3)
    assert not np.array_equal(first, second)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second)) == sorted(map(tuple, triplets))
    assert np.array_equal(FixedSetOfTriplets(labels, 200, seed=5).fixed_set_of_triplets, triplets)
    torch.manual_seed(1)
    seedless = FixedSetOfTriplets(labels, 20).fixed_set_of_triplets
    torch.manual_seed(1)
    assert np.array_equal(FixedSetOfTriplets(labels, 20).fixed_set_of_triplets, seedless)


@pytest.mark.parametrize("labels, num_triplets, match", [
    ([1, 1, 1], 5, "at least 2 classes.*got 1"),
    ([0, 1, 1], 0, "num_triplets must be a positive int, got 0"),
    ([0.5, 1.0], 3, "labels must be 1-D integers"),
])
def test_bad_arguments_are_named(labels, num_triplets, match):
    with pytest.raises(ValueError, match=match):
        FixedSetOfTriplets(labels, num_triplets)

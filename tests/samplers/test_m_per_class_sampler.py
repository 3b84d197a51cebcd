"""MPerClassSampler against PML's: the batch composition guarantee for many (m, batch_size), PML's len()
for the same arguments, and a ValueError naming the values wherever PML raises on bad input."""

from collections import Counter

import numpy as np
import pytest
import torch
from pytorch_metric_learning.samplers import MPerClassSampler as PMLMPerClassSampler
from torch.utils.data import DataLoader

from dmlscale.samplers import MPerClassSampler


def uneven_labels(num_classes: int, seed: int = 0) -> np.ndarray:
    """Shuffled labels, class sizes 1..12, so some classes are smaller than m."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes) * 3 + 5, rng.integers(1, 13, num_classes))  # labels need not be 0..C-1
    return rng.permutation(labels)


def check_blocks(labels, indices, block, m):
    sizes = Counter(labels.tolist())
    assert len(indices) % block == 0
    for start in range(0, len(indices), block):
        batch = np.asarray(indices[start:start + block])
        per_class = Counter(labels[batch].tolist())
        assert len(per_class) == block // m and set(per_class.values()) == {m}, per_class
        for label in per_class:  # a class with at least m samples gives m distinct ones
            members = batch[labels[batch] == label]
            assert len(set(members.tolist())) == min(m, sizes[label]) or sizes[label] < m


@pytest.mark.parametrize("m, batch_size", [(1, 8), (2, 8), (2, 30), (3, 12), (4, 32), (4, 4), (5, 50),
                                           (8, 64), (7, 21), (16, 32)])
def test_every_batch_holds_m_samples_of_batch_size_over_m_classes(m, batch_size):
    labels = uneven_labels(40, seed=m * 100 + batch_size)
    sampler = MPerClassSampler(labels, m, batch_size, length_before_new_iter=batch_size * 10 - 1, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == batch_size * 9
    check_blocks(labels, indices, batch_size, m)
    batches = list(DataLoader(range(len(labels)), batch_size=batch_size, sampler=sampler))  # as PML users do
    assert len(batches) == 9
    check_blocks(labels, torch.cat(batches).tolist(), batch_size, m)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_without_batch_size_each_pass_covers_every_class_once_in_runs_of_m(m):
    labels = uneven_labels(13, seed=m)
    sampler = MPerClassSampler(torch.as_tensor(labels), m, length_before_new_iter=500, seed=0)
    indices = list(sampler)
    single_pass = m * 13
    assert len(indices) == len(sampler) == 500 - 500 % single_pass
    check_blocks(labels, indices, single_pass, m)
    for start in range(0, len(indices), m):
        assert len(set(labels[indices[start:start + m]].tolist())) == 1


LEN_CASES = [(m, batch_size, length) for m in (1, 2, 3, 4) for batch_size in (None, 4, 12, 24)
             for length in (24, 25, 100, 1000, 100000)]


@pytest.mark.parametrize("m, batch_size, length", LEN_CASES)
def test_len_equals_pml(m, batch_size, length):
    labels = uneven_labels(11, seed=1)
    try:
        expected = len(PMLMPerClassSampler(labels, m, batch_size, length))
    except AssertionError:
        with pytest.raises(ValueError):
            MPerClassSampler(labels, m, batch_size, length)
        return
    ours = MPerClassSampler(labels, m, batch_size, length, seed=0)
    assert len(ours) == expected
    assert len(list(ours)) == expected
    assert ours.calculate_num_iters() == PMLMPerClassSampler(labels, m, batch_size, length).calculate_num_iters()


def test_default_length_is_pmls():
    labels = uneven_labels(11)
    assert len(MPerClassSampler(labels, 4)) == len(PMLMPerClassSampler(labels, 4)) == 100000 - 100000 % 44
    assert len(MPerClassSampler(labels, 4, 24)) == len(PMLMPerClassSampler(labels, 4, 24)) == 99984


def test_pml_yields_more_than_its_len_when_one_pass_exceeds_the_length_ours_yields_len():
    """The one documented difference in what iteration yields: 11 classes x m=4 = 44 > 30."""
    labels = uneven_labels(11)
    assert len(PMLMPerClassSampler(labels, 4, None, 30)) == 30
    assert len(list(PMLMPerClassSampler(labels, 4, None, 30))) == 44
    assert len(list(MPerClassSampler(labels, 4, None, 30))) == 30


BAD = [  # (arguments, text the message names); PML raises on each
    (dict(m=3, batch_size=8), "batch_size=8, m=3"),
    (dict(m=2, batch_size=30), "batch_size / m = 30/2 = 15 classes per batch, but labels have only 11"),
    (dict(m=2, batch_size=16, length_before_new_iter=10), "length_before_new_iter=10, batch_size=16"),
    (dict(m=0), "m must be a positive int, got 0"),
    (dict(m=0, batch_size=8), "m must be a positive int, got 0"),
    (dict(m=4, batch_size=0), "batch_size must be a positive int, got 0"),
]


@pytest.mark.parametrize("arguments, named", BAD, ids=[str(a) for a, _ in BAD])
def test_bad_arguments_raise_value_errors_where_pml_raises(arguments, named):
    labels = uneven_labels(11)
    with pytest.raises((AssertionError, ZeroDivisionError)):
        PMLMPerClassSampler(labels, **arguments)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        MPerClassSampler(labels, **arguments)


@pytest.mark.parametrize("labels, named", [
    (np.zeros((6, 2), dtype=np.int64), "labels must be 1-D integers, got shape (6, 2)"),
    (np.array([], dtype=np.int64), "labels must not be empty"),
], ids=["2-D", "empty"])
def test_bad_labels_raise_value_errors_where_pml_raises(labels, named):
    with pytest.raises((TypeError, ZeroDivisionError)):
        PMLMPerClassSampler(labels, 2)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        MPerClassSampler(labels, 2)


@pytest.mark.parametrize("labels, m, named", [
    ([0.5, 1.0, 2.0], 1, "labels must be 1-D integers, got dtype float64 (0.5, 1.0, 2.0)"),
    (["a", "b"], 1, "labels must be 1-D integers, got dtype <U1"),
    ([True, False], 1, "labels must be 1-D integers, got dtype bool"),
    ([0, 1, 2], -1, "m must be a positive int, got -1"),
    ([0, 1, 2], 2.5, "m must be a positive int, got 2.5"),
], ids=["float", "str", "bool", "negative-m", "fractional-m"])
def test_inputs_pml_accepts_but_dmlscale_refuses(labels, m, named):
    """PML takes any hashable label, int()s m, and with m=-1 and no batch_size yields only zeros."""
    PMLMPerClassSampler(labels, m)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        MPerClassSampler(labels, m)


def test_seed_fixes_the_stream_per_epoch_and_seedless_follows_torch_manual_seed():
    labels = uneven_labels(20)
    sampler = MPerClassSampler(labels, 2, 8, 400, seed=5)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    seedless = MPerClassSampler(labels, 2, 8, 400)
    torch.manual_seed(0)
    a = list(seedless)
    assert list(seedless) != a  # a fresh draw each iteration, as PML
    torch.manual_seed(0)
    assert list(seedless) == a

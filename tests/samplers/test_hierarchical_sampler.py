"""HierarchicalSampler against PML's: len() for the same arguments, the batch rules (super labels per
batch, places per super label, samples per class, every combination batches_per_super_tuple times, full
batches where PML's are full), and ValueErrors naming the values where PML raises."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from pytorch_metric_learning.samplers import HierarchicalSampler as PMLHierarchicalSampler
from torch.utils.data import DataLoader

from dmlscale.samplers import HierarchicalSampler


def two_level_labels(num_super: int = 5, seed: int = 0) -> np.ndarray:
    """(N, 2) labels: column 0 the class (unique across super labels), column 1 its super label; class
    sizes 2..9 and 3..6 classes per super label, shuffled rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for outer in range(num_super):
        for k in range(int(rng.integers(3, 7))):
            rows += [(outer * 100 + k, outer)] * int(rng.integers(2, 10))
    return rng.permutation(np.array(rows, dtype=np.int64))


CASES = [dict(batch_size=16, samples_per_class=2), dict(batch_size=24, samples_per_class=4),
         dict(batch_size=12, samples_per_class=2, super_classes_per_batch=3, batches_per_super_tuple=2),
         dict(batch_size=20, samples_per_class="all"), dict(batch_size=8, samples_per_class=1, super_classes_per_batch=1)]


@pytest.mark.parametrize("arguments", CASES, ids=[str(c) for c in CASES])
def test_batches_follow_pmls_rules_and_len(arguments):
    labels = two_level_labels()
    sampler = HierarchicalSampler(torch.as_tensor(labels), **arguments, seed=0)
    pml = PMLHierarchicalSampler(labels, **arguments)
    assert len(sampler) == len(pml)
    k = arguments.get("super_classes_per_batch", 2)
    per_super_tuple = arguments.get("batches_per_super_tuple", 4)
    places = arguments["batch_size"] // k
    size_of = Counter(map(tuple, labels.tolist()))
    batches = [b.tolist() for b in DataLoader(range(len(labels)), batch_sampler=sampler)]
    assert len(batches) == len(sampler)
    if arguments["samples_per_class"] != "all":  # then the fill does not depend on the class order
        assert sorted(len(b) for b in batches) == sorted(len(b) for b in pml)
    assert all(len(b) <= arguments["batch_size"] for b in batches)
    combinations = Counter()
    for batch in batches:
        rows = labels[batch]
        per_super = Counter(rows[:, 1].tolist())
        combinations[tuple(sorted(per_super))] += 1
        assert all(n <= places for n in per_super.values())
        for (inner, outer), n in Counter(map(tuple, rows.tolist())).items():
            wanted = arguments["samples_per_class"]
            assert n == (size_of[(inner, outer)] if wanted == "all" else wanted)
            members = [i for i in batch if labels[i, 0] == inner]
            if size_of[(inner, outer)] >= n:  # else drawn with replacement, as PML
                assert len(set(members)) == n
    assert combinations == Counter({c: per_super_tuple for c in itertools.combinations(range(5), k)})


def test_seed_fixes_the_batches_per_epoch():
    sampler = HierarchicalSampler(two_level_labels(), 16, 2, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


BAD = [
    (dict(batch_size=15, samples_per_class=2), "batch_size=15, super_classes_per_batch=2"),
    (dict(batch_size=16, samples_per_class=3), "= 8 must be a multiple of samples_per_class, got samples_per_class=3"),
    (dict(batch_size=16, samples_per_class=0), "samples_per_class must be a positive int, got 0"),
    (dict(batch_size=16, samples_per_class=2, outer_label=2), r"outer_label must be a column of labels \(< 2\), got 2"),
]


@pytest.mark.parametrize("arguments, named", BAD, ids=["batch", "samples", "zero", "column"])
def test_bad_arguments_raise_value_errors_where_pml_raises(arguments, named):
    labels = two_level_labels()
    with pytest.raises((AssertionError, IndexError)):
        PMLHierarchicalSampler(labels, **arguments)
    with pytest.raises(ValueError, match=named):
        HierarchicalSampler(labels, **arguments)


def test_refusals_where_pml_accepts():
    labels = two_level_labels(num_super=2)
    assert len(PMLHierarchicalSampler(labels, 24, 2, super_classes_per_batch=3)) == 0  # an empty sampler
    with pytest.raises(ValueError, match=r"super_classes_per_batch must be <= the number of super labels \(column 1: 2\), got 3"):
        HierarchicalSampler(labels, 24, 2, super_classes_per_batch=3)
    with pytest.raises(ValueError, match=r"labels must be 2-D integers, got shape \(\d+,\)"):
        HierarchicalSampler(labels[:, 0], 16, 2)

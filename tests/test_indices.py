"""Index tuples equal PML's (same order) without building a dense B x R x R mask."""

import pytest
import torch

from dmlscale import indices

lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")


def labels_with_repeats(seed, n=15, classes=4):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("seed", range(4))
def test_all_pairs_and_triplets_match_pml_in_order(seed):
    labels = labels_with_repeats(seed)
    ref = labels_with_repeats(seed + 100, n=11)
    for ours, theirs in [
        (indices.all_pairs(labels), lmu.get_all_pairs_indices(labels)),
        (indices.all_pairs(labels, ref), lmu.get_all_pairs_indices(labels, ref)),
        (indices.all_triplets(labels), lmu.get_all_triplets_indices(labels)),
        (indices.all_triplets(labels, ref), lmu.get_all_triplets_indices(labels, ref)),
    ]:
        assert len(ours) == len(theirs)
        for x, y in zip(ours, theirs):
            assert torch.equal(x, y)
    assert len(indices.all_triplets(labels)[0]) > 0


def test_all_triplets_brute_force_count_and_no_self_pairs():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    a, p, n = indices.all_triplets(labels)
    expected = [(i, j, k) for i in range(6) for j in range(6) for k in range(6)
                if i != j and labels[i] == labels[j] and labels[k] != labels[i]]
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == expected


def test_single_class_has_no_triplets():
    a, p, n = indices.all_triplets(torch.zeros(5, dtype=torch.long))
    assert len(a) == len(p) == len(n) == 0


@pytest.mark.parametrize("k", [None, 1, 4])
def test_random_triplets_match_pml_under_same_seed(k):
    labels = labels_with_repeats(7, n=20)
    torch.manual_seed(0)
    ours = indices.random_triplets(labels, triplets_per_anchor=k)
    torch.manual_seed(0)
    theirs = lmu.get_random_triplet_indices(labels, t_per_anchor=k)
    for x, y in zip(ours, theirs):
        assert torch.equal(x, y)
    assert len(ours[0]) > 0


def test_convert_pairs_to_triplets_matches_pml():
    labels = labels_with_repeats(3)
    pairs = indices.all_pairs(labels)
    for x, y in zip(indices.convert_to_triplets(pairs, labels), lmu.convert_to_triplets(pairs, labels)):
        assert torch.equal(x, y)


def test_bad_indices_tuple_is_named():
    with pytest.raises(ValueError, match=r"indices_tuple\[n\].*\[9, 9\].*\[0, 4\)"):
        indices.check_indices_tuple((torch.tensor([0]), torch.tensor([1]), torch.tensor([9])), 4, 4)
    with pytest.raises(ValueError, match="length"):
        indices.check_indices_tuple((torch.tensor([0]), torch.tensor([1])), 4, 4)
    with pytest.raises(ValueError, match="lengths do not match"):
        indices.check_indices_tuple((torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])), 4, 4)


def test_tuple_to_reference_rows_maps_only_the_reference_side():
    rows = torch.tensor([10, 11, 12, 13])
    a, p, n = indices.tuple_to_reference_rows((torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([1, 0])), rows)
    assert a.tolist() == [0, 1] and p.tolist() == [12, 13] and n.tolist() == [11, 10]
    a1, p, a2, n = indices.tuple_to_reference_rows(
        (torch.tensor([3]), torch.tensor([0]), torch.tensor([2]), torch.tensor([1])), rows)
    assert (a1.tolist(), p.tolist(), a2.tolist(), n.tolist()) == ([3], [10], [2], [11])
    with pytest.raises(ValueError, match="3 or 4 entries, got 2"):
        indices.tuple_to_reference_rows((torch.tensor([0]), torch.tensor([1])), rows)

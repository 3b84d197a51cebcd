"""SmoothAPLoss equals PML's where PML's layout-based grouping is right (contiguous class blocks, as many
classes as rows per class), in value and gradient, from labels and with tuple weights; elsewhere (any
layout, unequal classes, ref_emb) it is checked against a loop reference.

PML stores each query's AP in a float32 tensor, so its value and gradients carry float32 rounding even
for float64 inputs: the PML comparisons use 1e-6 (the loop reference keeps 1e-10)."""

import pytest
import torch
import torch.nn.functional as F

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, compare_losses, pair_tuple_from_labels, value_and_grads,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

PML_TOL = 1e-6  # PML's float32 AP buffer


def blocks(num_classes: int, seed: int, dim: int = 5):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(num_classes * num_classes, dim, generator=gen, dtype=torch.float64)
    return emb, torch.arange(num_classes).repeat_interleave(num_classes)


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("num_classes", [3, 4])
def test_parity_where_pml_groups_right(num_classes, temperature):
    emb, labels = blocks(num_classes, seed=121)
    value = compare_losses(ours.SmoothAPLoss(temperature=temperature), pml_losses.SmoothAPLoss(temperature=temperature),
                           emb, labels, tol=PML_TOL)
    assert value > 1e-3


def test_parity_with_tuple_weights():
    emb, labels = blocks(3, seed=122)
    compare_losses(ours.SmoothAPLoss(temperature=0.1), pml_losses.SmoothAPLoss(temperature=0.1), emb, labels,
                   indices_tuple=pair_tuple_from_labels(labels, 3), tol=PML_TOL)


def test_other_layouts():
    pytest.skip("PML bug: PML groups rows into blocks of (number of classes) rows, which are the classes only "
                "for contiguous blocks with as many classes as rows per class; see test_matches_reference")


def ref_smooth_ap(q, r, labels, ref_labels, own, temperature):
    """Loop reference: own[b] is query b's column in r (-1: none)."""
    s = F.normalize(q) @ F.normalize(r).T
    losses = []
    for b in range(len(q)):
        members = [j for j in range(len(r)) if ref_labels[j] == labels[b] or j == own[b]]
        if not members:
            continue
        total = 0
        for i in members:
            sig = [torch.sigmoid((s[b, j] - s[b, i]) / temperature) for j in range(len(r)) if j != i]
            sig_pos = [torch.sigmoid((s[b, j] - s[b, i]) / temperature) for j in members if j != i]
            total = total + (1 + sum(sig_pos)) / (1 + sum(sig))
        losses.append(1 - total / len(members))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("layout", ["shuffled", "unequal", "ref_emb"])
def test_matches_reference(layout):
    gen = torch.Generator().manual_seed(123)
    q = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1, 2, 0, 2, 1, 0]) if layout != "unequal" else torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3])
    loss = ours.SmoothAPLoss(temperature=0.1)
    if layout == "ref_emb":
        r = torch.randn(7, 5, generator=gen, dtype=torch.float64)
        ref_labels = torch.tensor([0, 1, 1, 2, 0, 1, 4])
        got, got_grads = value_and_grads(lambda x, y: loss(x, labels, ref_emb=y, ref_labels=ref_labels), [q, r])
        want, want_grads = value_and_grads(lambda x, y: ref_smooth_ap(x, y, labels, ref_labels, [-1] * 9, 0.1), [q, r])
    else:
        got, got_grads = value_and_grads(lambda x: loss(x, labels), [q])
        want, want_grads = value_and_grads(lambda x: ref_smooth_ap(x, x, labels, labels, list(range(9)), 0.1), [q])
    assert want > 1e-3
    assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, what="gradient")


def test_pml_refuses_unequal_classes_ours_computes():
    emb = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="same number of elements"):
        pml_losses.SmoothAPLoss()(emb, labels)
    assert torch.isfinite(ours.SmoothAPLoss()(emb, labels))


OTHER = [(i, s) for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if s[0] != "CosineSimilarity"]


@pytest.mark.parametrize("setting", [s for _, s in OTHER], ids=[i for i, _ in OTHER])
def test_other_distances_raise(setting):
    with pytest.raises(ValueError, match=f"SmoothAPLoss requires distance CosineSimilarity, got {setting[0]}"):
        ours.SmoothAPLoss(distance=getattr(ours_d, setting[0])(**setting[1]))
    with pytest.raises(AssertionError):
        pml_losses.SmoothAPLoss(distance=getattr(pml_d, setting[0])(**setting[1]))


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        ours.SmoothAPLoss(temperature=0)

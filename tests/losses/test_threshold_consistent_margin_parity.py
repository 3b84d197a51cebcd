"""ThresholdConsistentMarginLoss equals PML's in value and gradient (float64, 1e-10) from labels and
pair / triplet tuples, with no-positive / no-negative cases; PML's ref_emb case is a PML bug (the
pairs' second ends are read from the query batch), so ours is checked against a loop reference there."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, compare_losses, make_batch, run_mode, value_and_grads,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

SETTINGS = [dict(), dict(lambda_plus=0.5, lambda_minus=2.0, margin_plus=0.5, margin_minus=0.0),
            dict(margin_plus=0.2, margin_minus=-0.2)]


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets", "ref_emb"])
@pytest.mark.parametrize("kwargs", SETTINGS)
def test_parity(kwargs, mode):
    if mode == "ref_emb":
        pytest.skip("PML bug: under ref_emb PML's TCM loss takes the positives and negatives from the query "
                    "batch with reference indices; see test_ref_emb_matches_reference")
    value = run_mode(mode, ours.ThresholdConsistentMarginLoss(**kwargs),
                     pml_losses.ThresholdConsistentMarginLoss(**kwargs), seed=101)
    assert value > 1e-3


def test_ref_emb_matches_reference():
    q, labels = make_batch(102, batch_size=7)
    r, ref_labels = make_batch(103, batch_size=9)
    loss = ours.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.0)

    def reference(x, y):
        s = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(y).T
        same = labels[:, None] == ref_labels[None, :]
        pos, neg = s[same], s[~same]
        pos_terms, neg_terms = (0.5 - pos)[pos <= 0.5], (neg - 0.0)[neg >= 0.0]
        return pos_terms.mean() + neg_terms.mean()

    got, got_grads = value_and_grads(lambda x, y: loss(x, labels, ref_emb=y, ref_labels=ref_labels), [q, r])
    want, want_grads = value_and_grads(reference, [q, r])
    assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, what="gradient")


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
def test_no_positives_or_no_negatives(labels):
    emb, _ = make_batch(104, batch_size=8)
    compare_losses(ours.ThresholdConsistentMarginLoss(), pml_losses.ThresholdConsistentMarginLoss(), emb, labels)


def test_nothing_violates_is_a_connected_zero():
    emb, labels = make_batch(105)
    kwargs = dict(margin_plus=-2.0, margin_minus=2.0)
    value = compare_losses(ours.ThresholdConsistentMarginLoss(**kwargs),
                           pml_losses.ThresholdConsistentMarginLoss(**kwargs), emb, labels)
    assert value == 0


OTHER = [(i, s) for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if s[0] != "CosineSimilarity"]


@pytest.mark.parametrize("setting", [s for _, s in OTHER], ids=[i for i, _ in OTHER])
def test_other_distances_raise(setting):
    with pytest.raises(ValueError, match=f"requires distance CosineSimilarity, got {setting[0]}"):
        ours.ThresholdConsistentMarginLoss(distance=getattr(ours_d, setting[0])(**setting[1]))
    with pytest.raises(AssertionError):
        pml_losses.ThresholdConsistentMarginLoss(distance=getattr(pml_d, setting[0])(**setting[1]))

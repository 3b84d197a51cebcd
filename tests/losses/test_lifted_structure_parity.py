"""LiftedStructureLoss and GeneralizedLiftedStructureLoss equal PML's in value and gradient (float64,
1e-10) for every distance, from labels, pair and triplet tuples and ref_emb; no positives / no
negatives match PML too (a connected zero for LiftedStructureLoss). PML's LiftedStructureLoss under ref_emb is checked against a loop
reference instead (see test_lifted_ref_emb_matches_reference)."""

import pytest
import torch

import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, assert_close, compare_losses, make_batch, make_distances, run_mode,
    value_and_grads,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

NAMES = ["LiftedStructureLoss", "GeneralizedLiftedStructureLoss"]


def margins(inverted: bool) -> dict:
    return dict(pos_margin=0.8, neg_margin=0.2) if inverted else dict(pos_margin=0.1, neg_margin=1.0)


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_parity_every_distance(name, setting, mode):
    if name == "LiftedStructureLoss" and mode == "ref_emb":
        pytest.skip("PML bug: under ref_emb PML's LiftedStructureLoss matches negative-pair anchors (query rows) "
                    "against positive indices (reference rows); ours takes the positive's negatives from the "
                    "reference batch, checked in test_lifted_ref_emb_matches_reference")
    ours_dist, pml_dist = make_distances(*setting)
    kwargs = margins(ours_dist.is_inverted)
    value = run_mode(mode, getattr(ours, name)(distance=ours_dist, **kwargs),
                     getattr(pml_losses, name)(distance=pml_dist, **kwargs), seed=31)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("name", NAMES)
def test_defaults(name, mode):
    if name == "LiftedStructureLoss" and mode == "ref_emb":
        pytest.skip("PML bug under ref_emb: see test_parity_every_distance")
    run_mode(mode, getattr(ours, name)(), getattr(pml_losses, name)(), seed=32)


@pytest.mark.parametrize("reducer", ["SumReducer", "AvgNonZeroReducer"])
@pytest.mark.parametrize("name", NAMES)
def test_reducers(name, reducer):
    for mode in ("labels", "pairs"):
        run_mode(mode, getattr(ours, name)(reducer=getattr(ours, reducer)()),
                 getattr(pml_losses, name)(reducer=getattr(pml_reducers, reducer)()), seed=33)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
@pytest.mark.parametrize("name", NAMES)
def test_no_positives_or_no_negatives(name, labels):
    emb, _ = make_batch(34, batch_size=8)
    value = compare_losses(getattr(ours, name)(), getattr(pml_losses, name)(), emb, labels)
    if name == "LiftedStructureLoss":  # the generalized one keeps the side that exists
        assert value == 0


def ref_lifted(q, r, labels, ref_labels, neg_margin, pos_margin):
    """Loop reference under ref_emb (L2 distance of normalised rows): negatives of a and of p from r."""
    def dist(x, y):
        return torch.sqrt(((x / x.norm() - y / y.norm()) ** 2).sum())

    terms = []
    for a in range(len(q)):
        for p in range(len(r)):
            if labels[a] != ref_labels[p]:
                continue
            negs = [neg_margin - dist(q[a], r[n]) for n in range(len(r)) if ref_labels[n] != labels[a]]
            negs += [neg_margin - dist(r[p], r[n]) for n in range(len(r)) if ref_labels[n] != ref_labels[p]]
            lse = torch.logsumexp(torch.stack(negs), 0)
            terms.append(torch.relu(lse + dist(q[a], r[p]) - pos_margin) ** 2 / 2)
    return sum(terms) / len(terms)


def test_lifted_ref_emb_matches_reference():
    q, labels = make_batch(35, batch_size=7)
    r, ref_labels = make_batch(36, batch_size=9)
    loss = ours.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.1)
    got, got_grads = value_and_grads(lambda x, y: loss(x, labels, ref_emb=y, ref_labels=ref_labels), [q, r])
    want, want_grads = value_and_grads(lambda x, y: ref_lifted(x, y, labels, ref_labels, 1.0, 0.1), [q, r])
    assert want > 1e-3
    assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, what="gradient")


def test_lifted_block_of_queries_equals_whole_batch():
    """Rows 3..8 against the whole batch (query_ref_index = 3 + arange) give those rows' share of the
    whole-batch sum: the positive's negatives come from the reference batch, not the local queries."""
    emb, labels = make_batch(37, batch_size=12)
    loss = ours.LiftedStructureLoss(reducer=ours.SumReducer())
    whole = ours.LiftedStructureLoss(reducer=ours.DoNothingReducer())(emb, labels)["loss"]
    a1 = whole["indices"][0]
    want = whole["losses"][(a1 >= 3) & (a1 < 9)].sum()
    got = loss(emb[3:9], labels[3:9], ref_emb=emb, ref_labels=labels, query_ref_index=torch.arange(3, 9))
    assert_close(got, want)

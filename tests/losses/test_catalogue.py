"""The Deep_metric catalogue losses: each against a loop-per-anchor reference written here (value and
gradient, float64, 1e-10), PML parity where PML has the same loss, distances, ref_emb, bad
parameters, and the Gaussian sampler's reproducibility and support.

Legend: B queries, R references, D embedding size; q_BD / r_RD the embeddings, d(i, j) the reference
distance (or similarity) between query i and reference j computed one pair at a time.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import dmlscale.losses as ours
from dmlscale.distances import CosineSimilarity, LpDistance
from tests.parity import (
    assert_close,
    compare_losses,
    make_batch,
    make_distances,
    pair_tuple_from_labels,
    run_mode,
    triplet_tuple_from_labels,
    value_and_grads,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

TOL = 1e-10

# ----------------------------------------------------------------------------------------------
# Independent reference: one pair at a time, plain loops, no dmlscale code.
# ----------------------------------------------------------------------------------------------
DISTANCES = {
    "l2": (lambda: LpDistance(), False),
    "l1raw": (lambda: LpDistance(p=1, normalize_embeddings=False), False),
    "cos": (lambda: CosineSimilarity(), True),
}


def ref_value(kind: str, q_BD, r_RD, i: int, j: int):
    """Distance (or similarity) between query i and reference j, from scratch."""
    if kind == "l2":
        a, b = q_BD[i] / q_BD[i].norm(), r_RD[j] / r_RD[j].norm()
        return torch.sqrt(((a - b) ** 2).sum())
    if kind == "l1raw":
        return (q_BD[i] - r_RD[j]).abs().sum()
    if kind == "cos":
        return (q_BD[i] / q_BD[i].norm()) @ (r_RD[j] / r_RD[j].norm())
    raise AssertionError(kind)


def ref_pairs(labels, ref_labels, self_ref: bool, indices_tuple=None):
    """(positives, negatives) as per-anchor lists of reference indices."""
    num_query, num_ref = len(labels), len(ref_labels)
    pos = {i: [] for i in range(num_query)}
    neg = {i: [] for i in range(num_query)}
    if indices_tuple is None:
        for i in range(num_query):
            for j in range(num_ref):
                if labels[i] == ref_labels[j] and not (self_ref and i == j):
                    pos[i].append(j)
                elif labels[i] != ref_labels[j]:
                    neg[i].append(j)
    else:
        a1, p, a2, n = (x.tolist() for x in indices_tuple)
        for i, j in zip(a1, p):
            pos[i].append(j)
        for i, j in zip(a2, n):
            neg[i].append(j)
    return pos, neg


def ref_triplets(labels, ref_labels, self_ref: bool):
    pos, neg = ref_pairs(labels, ref_labels, self_ref)
    return [(a, p, n) for a in pos for p in pos[a] for n in neg[a]]


def gap(inverted: bool, d_ap, d_an):
    """How much the negative beats the positive: d_ap - d_an, or s_an - s_ap."""
    return d_an - d_ap if inverted else d_ap - d_an


def ref_batch_all(q, r, triplets, kind, inverted, margin):
    hinges = [torch.clamp(gap(inverted, ref_value(kind, q, r, a, p), ref_value(kind, q, r, a, n)) + margin, min=0)
              for a, p, n in triplets]
    active = [h for h in hinges if h.item() > 0]
    return sum(active) / len(active) if active else q.sum() * 0


def ref_soft_margin(q, r, triplets, kind, inverted, beta):
    terms = [torch.log1p(torch.exp(beta * gap(inverted, ref_value(kind, q, r, a, p), ref_value(kind, q, r, a, n))))
             for a, p, n in triplets]
    return sum(terms) / len(terms)


def ref_log_sum_exp(xs, beta):
    return torch.log(sum(torch.exp(beta * x) for x in xs)) / beta


def ref_hard_pair(q, r, pos, neg, kind, inverted, pos_threshold, neg_margin, beta, counts=None):
    """counts (optional dict) receives how many pairs were active and inactive, per kind."""
    total = q.sum() * 0
    for a in pos:
        pos_excess = [(pos_threshold - s) if inverted else (s - pos_threshold)
                      for s in (ref_value(kind, q, r, a, p) for p in pos[a])]
        neg_excess = [(s - neg_margin) if inverted else (neg_margin - s)
                      for s in (ref_value(kind, q, r, a, n) for n in neg[a])]
        pos_active = [x for x in pos_excess if x.item() > 0]
        neg_active = [x for x in neg_excess if x.item() > 0]
        if counts is not None:
            for key, value in (("pos_on", len(pos_active)), ("pos_off", len(pos_excess) - len(pos_active)),
                               ("neg_on", len(neg_active)), ("neg_off", len(neg_excess) - len(neg_active))):
                counts[key] = counts.get(key, 0) + value
        if pos_active:
            total = total + ref_log_sum_exp(pos_active, beta)
        if neg_active:
            total = total + ref_log_sum_exp(neg_active, beta)
    return total / len(pos)


def ref_bin_deviance(q, r, pos, neg, kind, inverted, alpha, beta, margin, slack, neg_weight):
    total = q.sum() * 0
    for a in pos:
        if not pos[a]:
            continue
        pos_vals = [ref_value(kind, q, r, a, p) for p in pos[a]]
        sign = 1 if inverted else -1  # +1: larger is closer
        pos_terms = [torch.log1p(torch.exp(-alpha * sign * (s - margin))) for s in pos_vals]
        total = total + sum(pos_terms) / len(pos_terms)
        hardest = min(s.item() for s in pos_vals) if inverted else max(s.item() for s in pos_vals)
        neg_vals = [ref_value(kind, q, r, a, n) for n in neg[a]]
        kept = [s for s in neg_vals if (s.item() > hardest - slack if inverted else s.item() < hardest + slack)]
        if kept:
            neg_terms = [torch.log1p(torch.exp(beta * sign * (s - margin))) for s in kept]
            total = total + neg_weight * sum(neg_terms) / len(neg_terms)
    return total / len(pos)


def ref_contrastive(q, r, pos, neg, kind, inverted, pos_margin, neg_margin):
    def active_mean(values):
        active = [v for v in values if v.item() > 0]
        return sum(active) / len(active) if active else q.sum() * 0

    sign = -1 if inverted else 1
    pos_h = [torch.clamp(sign * (ref_value(kind, q, r, a, p) - pos_margin), min=0) for a in pos for p in pos[a]]
    neg_h = [torch.clamp(sign * (neg_margin - ref_value(kind, q, r, a, n)), min=0) for a in neg for n in neg[a]]
    return active_mean(pos_h) + active_mean(neg_h)


# ----------------------------------------------------------------------------------------------
# Test inputs
# ----------------------------------------------------------------------------------------------
MODES = ["labels", "tuple", "ref_emb"]


def clustered_batch(seed: int, batch_size: int, cluster: float):
    """make_batch, shifted towards one fixed centre per class by `cluster` (0: plain random)."""
    emb, labels = make_batch(seed, batch_size=batch_size, dim=4, num_classes=3)
    centres = torch.eye(4, dtype=torch.float64)[:3] * cluster
    return emb + centres[labels], labels


def case(mode: str, seed: int, *, batch_size: int = 8, triplet_tuple: bool = False, cluster: float = 0.0):
    """(q, labels, r, ref_labels, self_ref, indices_tuple) for one input mode."""
    q, labels = clustered_batch(seed, batch_size, cluster)
    if mode == "ref_emb":
        r, ref_labels = clustered_batch(seed + 50, batch_size + 2, cluster)
        return q, labels, r, ref_labels, False, None
    if mode == "tuple":
        tup = triplet_tuple_from_labels(labels, seed) if triplet_tuple else pair_tuple_from_labels(labels, seed)
        return q, labels, None, None, True, tup
    return q, labels, None, None, True, None


def check_against_reference(loss, reference, q, labels, r, ref_labels, indices_tuple):
    """Our value and gradients (w.r.t. q and r) equal the reference's."""
    inputs = [q] if r is None else [q, r]

    def ours_fn(*leaves):
        extra = {} if r is None else dict(ref_emb=leaves[1], ref_labels=ref_labels)
        return loss(leaves[0], labels, indices_tuple=indices_tuple, **extra)

    def ref_fn(*leaves):
        return reference(leaves[0], leaves[0] if r is None else leaves[1])

    ours_value, ours_grads = value_and_grads(ours_fn, inputs)
    ref_val, ref_grads = value_and_grads(ref_fn, inputs)
    assert ref_val.abs() > 1e-6, "degenerate test case: the reference loss is zero"
    assert_close(ours_value, ref_val, TOL, "loss value vs reference")
    for k, (g_ours, g_ref) in enumerate(zip(ours_grads, ref_grads)):
        assert g_ref.abs().max() > 0, "degenerate test case: zero reference gradient"
        assert_close(g_ours, g_ref, TOL, f"gradient of input {k} vs reference")


def triplets_for(labels, ref_labels, self_ref, indices_tuple):
    if indices_tuple is not None:
        return list(zip(*(x.tolist() for x in indices_tuple)))
    return ref_triplets(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref)


# ----------------------------------------------------------------------------------------------
# (a) + (c): reference value and gradient, per distance and input mode
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DISTANCES))
@pytest.mark.parametrize("margin", [0.1, 0.6])
def test_batch_all_matches_reference(kind, mode, margin):
    make_distance, inverted = DISTANCES[kind]
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=1, triplet_tuple=True)
    triplets = triplets_for(labels, ref_labels, self_ref, tup)
    loss = ours.BatchAllTripletLoss(margin=margin, distance=make_distance())
    check_against_reference(loss, lambda qq, rr: ref_batch_all(qq, rr, triplets, kind, inverted, margin),
                            q, labels, r, ref_labels, tup)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DISTANCES))
@pytest.mark.parametrize("beta", [1.0, 30.0])
def test_soft_margin_matches_reference(kind, mode, beta):
    make_distance, inverted = DISTANCES[kind]
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=2, triplet_tuple=True)
    triplets = triplets_for(labels, ref_labels, self_ref, tup)
    loss = ours.SoftMarginTripletLoss(beta=beta, distance=make_distance())
    check_against_reference(loss, lambda qq, rr: ref_soft_margin(qq, rr, triplets, kind, inverted, beta),
                            q, labels, r, ref_labels, tup)


def split_point(values):
    """A threshold halfway between the two middle distinct values, far from any value.

    Symmetric pairs ((a, p) and (p, a)) carry equal values, so the two middle values of the raw list
    can be equal, and a threshold on a value flips with the last bit of the machine's arithmetic.
    Distinct values are taken with a tolerance far above rounding, so the threshold sits in a real gap.
    """
    distinct = []
    for v in sorted(values):
        if not distinct or v - distinct[-1] > 1e-9:
            distinct.append(v)
    assert len(distinct) >= 2, f"degenerate test case: one distinct value in {values}"
    k = len(distinct) // 2
    return (distinct[k - 1] + distinct[k]) / 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DISTANCES))
@pytest.mark.parametrize("beta", [10.0, 2.5])
def test_hard_pair_matches_reference(kind, mode, beta):
    make_distance, inverted = DISTANCES[kind]
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=3)
    pos, neg = ref_pairs(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref, tup)
    rr = q if r is None else r
    # thresholds at the medians of the reference values, so each keeps some pairs and drops others
    settings = dict(pos_threshold=split_point([ref_value(kind, q, rr, a, p).item() for a in pos for p in pos[a]]),
                    neg_margin=split_point([ref_value(kind, q, rr, a, n).item() for a in neg for n in neg[a]]))
    loss = ours.HardPairLoss(beta=beta, distance=make_distance(), **settings)
    counts = {}
    check_against_reference(
        loss, lambda qq, rr: ref_hard_pair(qq, rr, pos, neg, kind, inverted, beta=beta, counts=counts, **settings),
        q, labels, r, ref_labels, tup)
    assert all(counts[key] > 0 for key in ("pos_on", "pos_off", "neg_on", "neg_off")), counts


def test_hard_pair_defaults_match_reference():
    q, labels, _, _, _, _ = case("labels", seed=3)
    pos, neg = ref_pairs(labels.tolist(), labels.tolist(), True)
    check_against_reference(
        ours.HardPairLoss(),
        lambda qq, rr: ref_hard_pair(qq, rr, pos, neg, "l2", False, pos_threshold=0.8, neg_margin=1.1, beta=10.0),
        q, labels, None, None, None)


def test_hard_pair_defaults():
    loss = ours.HardPairLoss()
    assert isinstance(loss.distance, LpDistance) and loss.distance.normalize_embeddings
    assert (loss.pos_threshold, loss.neg_margin, loss.beta) == (0.8, 1.1, 10.0)
    assert isinstance(loss.reducer, ours.MeanReducer)


BIN_DEV_SETTINGS = {"cos": dict(), "l2": dict(margin=0.9), "l1raw": dict(margin=2.5, beta=5.0)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DISTANCES))
@pytest.mark.parametrize("slack", [0.05, 0.3])
def test_bin_deviance_matches_reference(kind, mode, slack):
    make_distance, inverted = DISTANCES[kind]
    params = dict(alpha=2.0, beta=50.0, margin=0.5, neg_weight=0.04) | BIN_DEV_SETTINGS[kind]
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=4)
    pos, neg = ref_pairs(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref, tup)
    loss = ours.BinomialDevianceLoss(slack=slack, distance=make_distance(), **params)
    check_against_reference(
        loss, lambda qq, rr: ref_bin_deviance(qq, rr, pos, neg, kind, inverted, slack=slack, **params),
        q, labels, r, ref_labels, tup)


def test_bin_deviance_defaults_and_selection():
    """Defaults are the catalogue's; the hardest-positive rule drops some negatives and keeps others."""
    loss = ours.BinomialDevianceLoss()
    assert isinstance(loss.distance, CosineSimilarity)
    assert (loss.alpha, loss.beta, loss.margin, loss.slack, loss.neg_weight) == (2.0, 50.0, 0.5, 0.05, 0.04)
    q, labels = make_batch(4, batch_size=8, dim=4, num_classes=3)
    s = CosineSimilarity()(q)
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    hardest = s.masked_fill(~same, math.inf).min(dim=1).values
    kept = (labels[:, None] != labels[None, :]) & (s > hardest[:, None] - 0.05)
    assert 0 < kept.sum() < (labels[:, None] != labels[None, :]).sum()


# Gaussian sampler: with negatives_per_anchor at least the number of negatives every negative is kept,
# so the loss is deterministic and equals the plain contrastive reference on all pairs.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["l2", "cos"])
def test_gaussian_all_negatives_matches_reference(kind, mode):
    make_distance, inverted = DISTANCES[kind]
    margins = dict(pos_margin=0.9, neg_margin=0.1) if inverted else dict(pos_margin=0.3, neg_margin=1.2)
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=5)
    pos, neg = ref_pairs(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref, tup)
    loss = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=50, seed=0, distance=make_distance(), **margins)
    check_against_reference(loss, lambda qq, rr: ref_contrastive(qq, rr, pos, neg, kind, inverted, **margins),
                            q, labels, r, ref_labels, tup)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("favour", ["mean", "tails"])
def test_gaussian_sampled_loss_matches_reference_on_drawn_pairs(mode, favour):
    """Read the draw through DoNothingReducer, then a twin loss with the same seed gives the reference
    contrastive loss on exactly those pairs."""
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=6, batch_size=10)
    extra = {} if r is None else dict(ref_emb=r, ref_labels=ref_labels)
    raw = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=2, favour=favour, seed=11,
                                            reducer=ours.DoNothingReducer())(q, labels, indices_tuple=tup, **extra)
    a2, n = raw["neg_loss"]["indices"]
    pos, _ = ref_pairs(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref, tup)
    drawn = {i: [] for i in range(len(q))}
    for i, j in zip(a2.tolist(), n.tolist()):
        drawn[i].append(j)
    loss = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=2, favour=favour, seed=11)
    check_against_reference(loss, lambda qq, rr: ref_contrastive(qq, rr, pos, drawn, "l2", False, 0.0, 1.2),
                            q, labels, r, ref_labels, tup)


def ref_sampling_probabilities(values, favour):
    """Per-row probabilities of a single draw, from the Gaussian fitted to the row's values."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    sign = -1 if favour == "mean" else 1
    weights = [math.exp(sign * ((v - mean) / std) ** 2 / 2) for v in values]
    return [w / sum(weights) for w in weights]


@pytest.mark.parametrize("favour", ["mean", "tails"])
def test_gaussian_weights_match_reference(favour):
    q, labels = make_batch(7, batch_size=10, dim=4, num_classes=3)
    loss = ours.GaussianWeightedNegativeLoss(favour=favour)
    d = LpDistance()(q)
    neg = labels[:, None] != labels[None, :]
    weights = loss.negative_weights(d, neg)
    assert torch.all((weights > 0) == neg)
    for i in range(len(q)):
        cols = [j for j in range(len(q)) if labels[i] != labels[j]]
        expected = ref_sampling_probabilities([d[i, j].item() for j in cols], favour)
        got = weights[i, cols] / weights[i, cols].sum()
        assert_close(got, torch.tensor(expected, dtype=torch.float64), 1e-12, f"row {i} probabilities")


@pytest.mark.parametrize("favour", ["mean", "tails"])
def test_gaussian_draw_frequencies_follow_weights(favour):
    values = torch.tensor([0.2, 0.9, 1.0, 1.1, 1.2, 1.9, 0.0], dtype=torch.float64)
    neg_row = torch.tensor([True] * 6 + [False])
    num_rows = 4000
    loss = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=1, favour=favour, seed=2)
    sampled = loss.sample_negatives(values.expand(num_rows, -1), neg_row.expand(num_rows, -1).clone())
    assert torch.all(sampled.sum(dim=1) == 1) and not sampled[:, 6].any()
    freq = sampled.double().mean(dim=0)[:6]
    expected = torch.tensor(ref_sampling_probabilities(values[:6].tolist(), favour), dtype=torch.float64)
    assert (freq - expected).abs().max() < 0.04, (freq, expected)


# ----------------------------------------------------------------------------------------------
# (b) PML parity
# ----------------------------------------------------------------------------------------------
PARITY_DISTANCES = [("LpDistance", dict()), ("LpDistance", dict(p=1, power=2, normalize_embeddings=False)),
                    ("CosineSimilarity", dict())]


@pytest.mark.parametrize("mode", ["labels", "triplets", "ref_emb"])
@pytest.mark.parametrize("setting", PARITY_DISTANCES, ids=lambda s: f"{s[0]}-{len(s[1])}")
def test_batch_all_equals_pml_triplet_margin(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    run_mode(mode, ours.BatchAllTripletLoss(margin=0.1, distance=ours_dist),
             pml_losses.TripletMarginLoss(margin=0.1, distance=pml_dist, reducer=pml_reducers.AvgNonZeroReducer(),
                                          triplets_per_anchor="all"), seed=21)


# PML's smooth loss is torch's softplus, linear above 20; ours is exact, so keep the gaps below 20 here
SOFT_PARITY_DISTANCES = [PARITY_DISTANCES[0], ("LpDistance", dict(p=1, normalize_embeddings=False)),
                         PARITY_DISTANCES[2]]


@pytest.mark.parametrize("mode", ["labels", "triplets", "ref_emb"])
@pytest.mark.parametrize("setting", SOFT_PARITY_DISTANCES, ids=lambda s: f"{s[0]}-{len(s[1])}")
def test_soft_margin_equals_pml_smooth_triplet(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    run_mode(mode, ours.SoftMarginTripletLoss(beta=1.0, distance=ours_dist),
             pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True, distance=pml_dist,
                                          reducer=pml_reducers.MeanReducer()), seed=22)


def test_soft_margin_sampled_triplets_equal_pml():
    emb, labels = make_batch(23, batch_size=12)
    compare_losses(ours.SoftMarginTripletLoss(triplets_per_anchor=2),
                   pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True, triplets_per_anchor=2,
                                                reducer=pml_reducers.MeanReducer()),
                   emb, labels, seed=5)


# ----------------------------------------------------------------------------------------------
# (d) bad parameters
# ----------------------------------------------------------------------------------------------
BAD_PARAMETERS = [
    (ours.BatchAllTripletLoss, dict(margin=-0.1), "-0.1"),
    (ours.BatchAllTripletLoss, dict(margin="0.1"), "'0.1'"),
    (ours.SoftMarginTripletLoss, dict(beta=0.0), "0.0"),
    (ours.SoftMarginTripletLoss, dict(beta=float("nan")), "nan"),
    (ours.SoftMarginTripletLoss, dict(triplets_per_anchor=0), "0"),
    (ours.HardPairLoss, dict(beta=-2.0), "-2.0"),
    (ours.HardPairLoss, dict(pos_threshold=float("inf")), "inf"),
    (ours.HardPairLoss, dict(neg_margin=None), "None"),
    (ours.BinomialDevianceLoss, dict(alpha=0), "0"),
    (ours.BinomialDevianceLoss, dict(beta=-50.0), "-50.0"),
    (ours.BinomialDevianceLoss, dict(slack=-0.05), "-0.05"),
    (ours.BinomialDevianceLoss, dict(neg_weight=-1.0), "-1.0"),
    (ours.BinomialDevianceLoss, dict(margin=True), "True"),
    (ours.GaussianWeightedNegativeLoss, dict(negatives_per_anchor=0), "0"),
    (ours.GaussianWeightedNegativeLoss, dict(negatives_per_anchor=2.5), "2.5"),
    (ours.GaussianWeightedNegativeLoss, dict(favour="median"), "'median'"),
    (ours.GaussianWeightedNegativeLoss, dict(seed="7"), "'7'"),
    (ours.GaussianWeightedNegativeLoss, dict(seed=1, generator=torch.Generator()), "seed=1"),
    (ours.GaussianWeightedNegativeLoss, dict(generator=3), "int"),
]


@pytest.mark.parametrize("cls,kwargs,shown", BAD_PARAMETERS,
                         ids=[f"{c.__name__}-{next(iter(k))}-{s}" for c, k, s in BAD_PARAMETERS])
def test_bad_parameters_raise_value_error_naming_the_value(cls, kwargs, shown):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=re.escape(shown)) as info:
        cls(**kwargs)
    assert name in str(info.value)


# ----------------------------------------------------------------------------------------------
# (e) Gaussian sampler: reproducible, negatives only
# ----------------------------------------------------------------------------------------------
def drawn_pairs(loss, q, labels, **kwargs):
    raw = loss(q, labels, **kwargs)
    return tuple(x.clone() for x in raw["neg_loss"]["indices"])


def test_gaussian_seed_reproducible_and_leaves_global_rng_alone():
    q, labels = make_batch(8, batch_size=16, dim=4, num_classes=3)

    def make(seed=None, generator=None):
        return ours.GaussianWeightedNegativeLoss(negatives_per_anchor=3, seed=seed, generator=generator,
                                                 reducer=ours.DoNothingReducer())

    state = torch.get_rng_state()
    first, twin = make(seed=4), make(seed=4)
    draws = [drawn_pairs(first, q, labels) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state), "a seeded loss must not touch the global generator"
    for k, draw in enumerate(draws):
        assert all(torch.equal(x, y) for x, y in zip(draw, drawn_pairs(twin, q, labels))), f"call {k} differs"
    assert not torch.equal(draws[0][1], draws[1][1]), "successive calls should draw afresh"
    assert not torch.equal(draws[0][1], drawn_pairs(make(seed=5), q, labels)[1]), "another seed, same draw"
    own = drawn_pairs(make(generator=torch.Generator().manual_seed(4)), q, labels)
    assert all(torch.equal(x, y) for x, y in zip(own, draws[0]))
    seeded_values = [ours.GaussianWeightedNegativeLoss(negatives_per_anchor=3, seed=4)(q, labels) for _ in range(2)]
    assert seeded_values[0] == seeded_values[1]


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_samples_only_negatives(mode):
    q, labels, r, ref_labels, self_ref, tup = case(mode, seed=9, batch_size=16)
    extra = {} if r is None else dict(ref_emb=r, ref_labels=ref_labels)
    k = 3
    loss = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=k, favour="tails", seed=1,
                                             reducer=ours.DoNothingReducer())
    a2, n = drawn_pairs(loss, q, labels, indices_tuple=tup, **extra)
    _, candidates = ref_pairs(labels.tolist(), (labels if ref_labels is None else ref_labels).tolist(), self_ref, tup)
    drawn = {i: n[a2 == i].tolist() for i in range(len(q))}
    for i in range(len(q)):
        assert set(drawn[i]) <= set(candidates[i]), f"anchor {i} drew a non-negative"
        assert len(set(drawn[i])) == len(drawn[i]) == min(k, len(set(candidates[i]))), f"anchor {i}: {drawn[i]}"


def test_gaussian_flat_rows_and_float32():
    """Equal negative distances (std 0) draw uniformly instead of dividing by zero; float32 works."""
    values = torch.ones(3, 5, dtype=torch.float32)
    neg = torch.tensor([[True] * 5, [True, True, False, False, True], [False] * 5])
    loss = ours.GaussianWeightedNegativeLoss(negatives_per_anchor=2, seed=0)
    weights = loss.negative_weights(values, neg)
    assert torch.equal(weights, neg.float())
    sampled = loss.sample_negatives(values, neg)
    assert sampled.sum(dim=1).tolist() == [2, 2, 0] and not (sampled & ~neg).any()


# ----------------------------------------------------------------------------------------------
# Edge cases shared by all five
# ----------------------------------------------------------------------------------------------
ALL_LOSSES = [ours.BatchAllTripletLoss, ours.SoftMarginTripletLoss, ours.HardPairLoss, ours.BinomialDevianceLoss,
              lambda: ours.GaussianWeightedNegativeLoss(seed=0)]


LOSS_IDS = ["batch_all", "soft_margin", "hard_pair", "bin_dev", "gauss"]
# (labels, which losses have nothing to learn): one row has no pair at all; one class has no
# triplet (pair losses still pull positives); all-distinct labels have no triplet and, for binomial
# deviance, no positive (the documented 0)
NOTHING_TO_LEARN = [([0], LOSS_IDS), ([0, 0, 0, 0], ["batch_all", "soft_margin"]),
                    ([0, 1, 2, 3], ["batch_all", "soft_margin", "bin_dev"])]


@pytest.mark.parametrize("make_loss,loss_id", list(zip(ALL_LOSSES, LOSS_IDS)), ids=LOSS_IDS)
@pytest.mark.parametrize("labels,zero_for", NOTHING_TO_LEARN, ids=["one_row", "one_class", "all_distinct"])
def test_nothing_to_learn_gives_connected_zero(make_loss, loss_id, labels, zero_for):
    emb = torch.randn(len(labels), 3, dtype=torch.float64, requires_grad=True)
    value = make_loss()(emb, torch.tensor(labels))
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(emb.grad))
    if loss_id in zero_for:
        assert value.item() == 0 and torch.all(emb.grad == 0)
    else:
        assert value.item() > 0 and emb.grad.abs().max() > 0


@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_labels_required(make_loss):
    with pytest.raises(ValueError, match="labels"):
        make_loss()(torch.randn(4, 3))

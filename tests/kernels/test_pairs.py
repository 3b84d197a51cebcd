"""Streamed MultiSimilarityLoss and ContrastiveLoss equal the materialised path and PML in value and
gradient: every distance of tests/parity.py, the batch against itself, a separate ref_emb and a block
of rows with `query_ref_index`, tiles that do not divide B, a row without positives, float64 (1e-10)
and float32 (1e-5), and the contrastive reducers (AvgNonZero, Mean, Sum, Threshold)."""

import pytest
import pytorch_metric_learning.losses as pml_losses
import torch

from dmlscale import losses, reducers
from dmlscale.losses.streamed_totals import TOTAL_KEY
from tests.kernels.test_mining import MODES, TILE, batch, call_inputs
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, make_batch, make_distances, value_and_grads


def make_pair_losses(setting, tiled, which=("ours", "pml")):
    """(MultiSimilarity, Contrastive) built for one side: ours at `tiled`, or PML's."""
    ours_d, pml_d = make_distances(*setting)
    if which == "pml":
        return (pml_losses.MultiSimilarityLoss(alpha=2, beta=10, base=0.5, distance=pml_d),
                pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.8, distance=make_distances(*setting)[1]))
    tiling = {"tiled": tiled, "tile_size": TILE}
    return (losses.MultiSimilarityLoss(alpha=2, beta=10, base=0.5, distance=ours_d, **tiling),
            losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.8, distance=make_distances(*setting)[0], **tiling))


def value_grads(loss, mode, emb, labels, ref, ref_labels):
    def fn(e, r):
        q, q_labels, kw = call_inputs(mode, e, labels, r, ref_labels)
        return loss(q, q_labels, **kw)

    return value_and_grads(fn, [emb, ref])


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_streamed_pair_losses_equal_materialised_and_pml(setting, mode):
    emb, labels = batch(13)
    ref, ref_labels = make_batch(14, batch_size=17, dim=6, num_classes=5)
    streamed = make_pair_losses(setting, True, "ours")
    plain = make_pair_losses(setting, False, "ours")
    pml = make_pair_losses(setting, None, "pml")
    for name, s_loss, p_loss, pml_loss in zip(("multisim", "contrastive"), streamed, plain, pml):
        v_s, g_s = value_grads(s_loss, mode, emb, labels, ref, ref_labels)
        v_p, g_p = value_grads(p_loss, mode, emb, labels, ref, ref_labels)
        assert v_p > 0.01, name
        assert_close(v_s, v_p, what=f"{name} value")
        for i, (a, b) in enumerate(zip(g_s, g_p)):
            assert_close(a, b, what=f"{name} gradient {i}")
        if mode != "block":  # PML has no query_ref_index
            v_pml, g_pml = value_grads(pml_loss, mode, emb, labels, ref, ref_labels)
            assert_close(v_s, v_pml, what=f"{name} value vs PML")
            for i, (a, b) in enumerate(zip(g_s, g_pml)):
                assert_close(a, b, what=f"{name} gradient {i} vs PML")


@pytest.mark.parametrize("reducer", [None, reducers.MeanReducer(), reducers.SumReducer(),
                                     reducers.ThresholdReducer(low=0.05, high=0.5)],
                         ids=["avg-nonzero", "mean", "sum", "threshold"])
def test_contrastive_reducers_and_float32(reducer):
    emb, labels = batch(17)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        def fn(tiled):
            loss = losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.3, reducer=reducer, tiled=tiled, tile_size=4)
            return value_and_grads(lambda e: loss(e, labels), [emb.to(dtype)])

        (v_s, g_s), (v_p, g_p) = fn(True), fn(False)
        assert v_p > 0.01 and v_s.dtype == dtype
        assert_close(v_s, v_p, tol * max(1.0, float(v_p)))  # a sum of ~500 terms: relative in float32
        assert_close(g_s[0], g_p[0], tol, "gradient")


def test_multisim_float32_and_rows_without_positives():
    emb, labels = batch(19, dtype=torch.float32)
    (v_s, g_s), (v_p, g_p) = (value_and_grads(lambda e: losses.MultiSimilarityLoss(tiled=t, tile_size=6)(e, labels),
                                              [emb]) for t in (True, False))
    assert_close(v_s, v_p, 1e-5)
    assert_close(g_s[0], g_p[0], 1e-5, "gradient")
    # row 9 has a singleton label: its loss is the negatives' term only, log(1 + sum exp) / beta
    rows = losses.MultiSimilarityLoss(tiled=True, tile_size=6, reducer=reducers.DoNothingReducer())(
        emb.double(), labels)["loss"]["losses"]
    sim = torch.nn.functional.normalize(emb.double(), dim=1) @ torch.nn.functional.normalize(emb.double(), dim=1).t()
    neg = labels != labels[9]
    expected = torch.log1p(torch.exp(50 * (sim[9, neg] - 0.5)).sum()) / 50
    assert abs(float(rows[9]) - float(expected)) <= 1e-10


def test_contrastive_negative_totals_count_and_switch():
    emb, labels = batch(23)
    dist = make_distances(*DISTANCE_SETTINGS[0])[0]
    loss = losses.ContrastiveLoss(neg_margin=1.2, distance=dist, tiled_threshold=23, tile_size=7)
    entry = loss.loss_dict(emb, labels)["neg_loss"]
    total, count = entry[TOTAL_KEY]
    mat = dist(emb).detach()
    hinge = torch.relu(1.2 - mat[labels[:, None] != labels[None, :]])
    assert count == int((hinge > 0).sum()) > 0
    assert abs(float(total) - float(hinge.sum())) <= 1e-10
    assert TOTAL_KEY not in losses.ContrastiveLoss(tiled_threshold=24).loss_dict(emb, labels)["neg_loss"]
    with pytest.raises(ValueError, match="DoNothingReducer"):
        losses.ContrastiveLoss(tiled=True, reducer=reducers.DoNothingReducer())(emb, labels)
    # a pair tuple keeps the materialised path; the DoNothing reducer falls back automatically
    plain = losses.ContrastiveLoss(tiled=False, reducer=reducers.DoNothingReducer())(emb, labels)
    auto = losses.ContrastiveLoss(tiled_threshold=2, reducer=reducers.DoNothingReducer())(emb, labels)
    assert torch.equal(plain["neg_loss"]["losses"], auto["neg_loss"]["losses"])

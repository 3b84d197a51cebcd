"""Streamed triplet mining and losses equal the materialised path (and PML) in value and gradient.

Covered: batch-hard (BatchHardTripletLoss, TripletMarginLoss + BatchHardMiner), TripletMarginMiner
(all / hard / semihard / easy) and batch-all TripletMarginLoss, for every distance of tests/parity.py,
with the batch against itself, against a separate ref_emb, and as a block of rows of a larger batch
(`query_ref_index`); tiles that do not divide B; an anchor without positives; float64 (1e-10) and
float32 (1e-5). Batch-all is also checked against a brute-force triple loop over the distance matrix.
"""

import pytest
import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.miners as pml_miners
import torch

from dmlscale import losses, miners, reducers
from dmlscale.indices import all_triplets
from dmlscale.losses.streamed_totals import TOTAL_KEY
from dmlscale.kernels.batch_all_triplets import streamed_batch_all
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, make_batch, make_distances, value_and_grads

TILE = 7  # divides none of the batch sizes below (23, 17, 13)
MODES = ["self", "ref_emb", "block"]
BLOCK_ROWS = torch.arange(6, 19)


def batch(seed: int = 7, dtype=torch.float64):
    """23 rows in 4 classes plus one singleton class (an anchor with no positive)."""
    emb, labels = make_batch(seed, batch_size=23, dim=6, num_classes=4)
    labels = labels.clone()
    labels[9] = 99
    return emb.to(dtype), labels


def call_inputs(mode, emb, labels, ref, ref_labels):
    """(embeddings, labels, keyword arguments) of one calling mode; the differentiated inputs come first."""
    if mode == "self":
        return emb, labels, {}
    if mode == "ref_emb":
        return emb, labels, {"ref_emb": ref, "ref_labels": ref_labels}
    return emb[BLOCK_ROWS], labels[BLOCK_ROWS], {"ref_emb": emb, "ref_labels": labels, "query_ref_index": BLOCK_ROWS}


def run(make_loss, make_miner, mode, emb, labels, ref, ref_labels, tiled):
    """(value, grads, mined tuple) of one loss (+ miner) on one path."""
    loss, miner = make_loss(tiled), (make_miner(tiled) if make_miner else None)
    mined = []

    def fn(e, r):
        q, q_labels, kw = call_inputs(mode, e, labels, r, ref_labels)
        tuple_ = None
        if miner is not None:
            miner_kw = {k: v for k, v in kw.items() if k != "query_ref_index"}
            tuple_ = miner(q, q_labels, **miner_kw, query_ref_index=kw.get("query_ref_index"))
            mined.append(tuple_)
        return loss(q, q_labels, tuple_, **kw)

    value, grads = value_and_grads(fn, [emb, ref])
    return value, grads, (mined[0] if mined else None)


def cases(dist_setting):
    """name -> (loss factory, miner factory or None), each taking `tiled`."""
    def d():
        return make_distances(*dist_setting)[0]

    tiling = lambda tiled: {"tiled": tiled, "tile_size": TILE}  # noqa: E731
    out = {
        "batch-all": (lambda t: losses.TripletMarginLoss(margin=0.3, distance=d(), **tiling(t)), None),
        "batch-all-smooth-mean": (lambda t: losses.TripletMarginLoss(margin=0.1, smooth_loss=True, distance=d(),
                                                                     reducer=reducers.MeanReducer(), **tiling(t)), None),
        "batch-hard-loss": (lambda t: losses.BatchHardTripletLoss(margin=0.3, distance=d(), **tiling(t)), None),
        "triplet+batch-hard-miner": (lambda t: losses.TripletMarginLoss(margin=0.3, distance=d(), **tiling(t)),
                                     lambda t: miners.BatchHardMiner(distance=d(), **tiling(t))),
    }
    for kind in ("hard", "semihard"):
        out[f"triplet+{kind}-miner"] = (
            lambda t: losses.TripletMarginLoss(margin=0.3, distance=d(), **tiling(t)),
            lambda t, kind=kind: miners.TripletMarginMiner(margin=0.4, type_of_triplets=kind, distance=d(), **tiling(t)))
    return out


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_streamed_triplets_equal_materialised(setting, mode):
    emb, labels = batch()
    ref, ref_labels = make_batch(8, batch_size=17, dim=6, num_classes=5)
    for name, (make_loss, make_miner) in cases(setting).items():
        plain = run(make_loss, make_miner, mode, emb, labels, ref, ref_labels, False)
        streamed = run(make_loss, make_miner, mode, emb, labels, ref, ref_labels, True)
        assert plain[0] > 0, name
        assert_close(streamed[0], plain[0], what=f"{name} value")
        for i, (g_s, g_p) in enumerate(zip(streamed[1], plain[1])):
            assert_close(g_s, g_p, what=f"{name} gradient {i}")
        if plain[2] is not None:
            assert all(torch.equal(x, y) for x, y in zip(streamed[2], plain[2])), f"{name}: mined tuples differ"


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_streamed_triplets_match_pml(setting):
    emb, labels = batch(3)
    ref, ref_labels = make_batch(4, batch_size=17, dim=6, num_classes=5)
    for use_ref in (False, True):
        kw = {"ref_emb": ref, "ref_labels": ref_labels} if use_ref else {}
        for ours_miner, pml_miner in [
            (miners.BatchHardMiner(distance=make_distances(*setting)[0], tiled=True, tile_size=TILE),
             pml_miners.BatchHardMiner(distance=make_distances(*setting)[1])),
            (miners.TripletMarginMiner(0.4, "semihard", distance=make_distances(*setting)[0], tiled=True, tile_size=TILE),
             pml_miners.TripletMarginMiner(0.4, type_of_triplets="semihard", distance=make_distances(*setting)[1])),
        ]:
            ours, theirs = ours_miner(emb, labels, **kw), pml_miner(emb, labels, **kw)
            assert len(ours[0]) > 0 and all(torch.equal(x, y) for x, y in zip(ours, theirs)), type(ours_miner).__name__
        ours_loss = losses.TripletMarginLoss(margin=0.3, distance=make_distances(*setting)[0], tiled=True, tile_size=TILE)
        pml_loss = pml_losses.TripletMarginLoss(margin=0.3, distance=make_distances(*setting)[1])
        inputs = [emb, ref] if use_ref else [emb]

        def call(loss):
            return lambda e, *r: loss(e, labels, **({"ref_emb": r[0], "ref_labels": ref_labels} if r else {}))

        v_ours, g_ours = value_and_grads(call(ours_loss), inputs)
        v_pml, g_pml = value_and_grads(call(pml_loss), inputs)
        assert v_pml > 0
        assert_close(v_ours, v_pml, what="batch-all vs PML")
        for g_o, g_p in zip(g_ours, g_pml):
            assert_close(g_o, g_p, what="batch-all gradient vs PML")


def brute_force_batch_all(mat, labels, ref_labels, own, margin, is_inverted):
    """sum of positive [d_ap - d_an + m]_+ and their count, by a triple loop over the matrix."""
    total, count = 0.0, 0
    for a in range(mat.shape[0]):
        for p in range(mat.shape[1]):
            if ref_labels[p] != labels[a] or p == own[a]:
                continue
            for n in range(mat.shape[1]):
                if ref_labels[n] == labels[a]:
                    continue
                gap = (mat[a, n] - mat[a, p]) if is_inverted else (mat[a, p] - mat[a, n])
                term = max(float(gap) + margin, 0.0)
                total, count = total + term, count + (term > 0)
    return total, count


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS[:1] + DISTANCE_SETTINGS[6:7], ids=[DISTANCE_IDS[0], DISTANCE_IDS[6]])
def test_batch_all_value_is_sum_over_count_of_positive_triplets(setting):
    emb, labels = batch(11)
    dist = make_distances(*setting)[0]
    loss = losses.TripletMarginLoss(margin=0.2, distance=dist, tiled=True, tile_size=TILE)
    entry = loss.loss_dict(emb, labels)["loss"]
    total, count = entry[TOTAL_KEY]
    q_BD = dist.maybe_normalize(emb)
    _, _, num_triplets = streamed_batch_all(dist, q_BD, q_BD, labels, labels, torch.arange(len(labels)), margin=0.2,
                                            term_fn=torch.relu, keep_fn=None, tile=TILE)
    assert num_triplets == len(all_triplets(labels)[0])  # the miner's count of valid triplets
    own = torch.arange(len(labels))
    expected_total, expected_count = brute_force_batch_all(dist(emb).detach(), labels, labels, own, 0.2,
                                                           dist.is_inverted)
    assert count == expected_count > 0
    assert abs(float(total) - expected_total) <= 1e-10
    assert abs(float(loss(emb, labels)) - expected_total / expected_count) <= 1e-10


@pytest.mark.parametrize("reducer", [reducers.SumReducer(), reducers.MeanReducer(),
                                     reducers.ThresholdReducer(low=0.05, high=0.4)], ids=["sum", "mean", "threshold"])
def test_batch_all_reducers_and_float32(reducer):
    emb, labels = batch(5)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        def fn(tiled):
            loss = losses.TripletMarginLoss(margin=0.3, reducer=reducer, tiled=tiled, tile_size=4)
            return value_and_grads(lambda e: loss(e, labels), [emb.to(dtype)])

        (v_s, g_s), (v_p, g_p) = fn(True), fn(False)
        assert v_p > 0 and v_s.dtype == dtype
        assert_close(v_s, v_p, tol)
        assert_close(g_s[0], g_p[0], tol, "gradient")


def test_float32_batch_hard_and_semihard_within_1e5():
    emb, labels = batch(9, dtype=torch.float32)
    for make_loss, make_miner in list(cases(DISTANCE_SETTINGS[0]).values())[2:]:
        (v_s, g_s, _), (v_p, g_p, _) = (run(make_loss, make_miner, "self", emb, labels, emb, labels, t)
                                        for t in (True, False))
        assert v_p > 0
        assert_close(v_s, v_p, 1e-5)
        assert_close(g_s[0], g_p[0], 1e-5, "gradient")


def test_anchors_without_positive_or_negative():
    emb, labels = batch(2)
    ref, _ = make_batch(3, batch_size=10, dim=6)
    ref_labels = torch.zeros(10, dtype=torch.long)  # label-0 anchors lack negatives, all others positives
    for tiled in (True, False):
        assert all(len(x) == 0 for x in miners.BatchHardMiner(tiled=tiled)(emb, labels, ref, ref_labels))
        for loss in (losses.TripletMarginLoss(tiled=tiled), losses.BatchHardTripletLoss(tiled=tiled)):
            value, grads = value_and_grads(lambda e: loss(e, labels, ref_emb=ref, ref_labels=ref_labels), [emb])
            assert value == 0 and torch.count_nonzero(grads[0]) == 0
    # only the anchors that have both are mined, identically on both paths
    ref_labels = torch.tensor([0, 0, 1, 1, 1, 7, 7, 7, 7, 7])
    mined = [miners.BatchHardMiner(tiled=t)(emb, labels, ref, ref_labels) for t in (True, False)]
    assert torch.equal(mined[0][0], torch.where((labels == 0) | (labels == 1))[0])
    assert all(torch.equal(x, y) for x, y in zip(*mined))


def test_allowed_ranges_and_all_easy_miners_mine_the_same():
    emb, labels = batch(4)
    for make in (lambda t: miners.BatchHardMiner(allowed_pos_range=(0.3, 1.2), allowed_neg_range=(0.5, 1.9),
                                                 tiled=t, tile_size=3),
                 lambda t: miners.TripletMarginMiner(0.2, "all", tiled=t, tile_size=6),
                 lambda t: miners.TripletMarginMiner(0.2, "easy", tiled=t, tile_size=6)):
        mined = [make(t)(emb, labels) for t in (True, False)]
        assert len(mined[1][0]) > 0 and all(torch.equal(x, y) for x, y in zip(*mined))


def test_automatic_switch_skips_the_matrix_and_bad_settings_raise():
    emb, labels = batch(6)
    calls = []
    dist = make_distances(*DISTANCE_SETTINGS[0])[0]
    dist.register_forward_hook(lambda *_: calls.append(1))  # the materialised path calls the distance
    loss = losses.BatchHardTripletLoss(distance=dist, tiled_threshold=20, tile_size=8)
    assert loss(emb, labels) > 0 and calls == []
    assert losses.TripletMarginLoss(distance=dist, tiled_threshold=24)(emb, labels) > 0 and len(calls) == 1
    streamed = losses.TripletMarginLoss(tiled_threshold=23).loss_dict(emb, labels)["loss"]
    assert TOTAL_KEY in streamed
    # swap cannot stream over all triplets: automatic falls back, forced raises naming it
    auto, plain = (losses.TripletMarginLoss(swap=True, tiled=t, tiled_threshold=2)(emb, labels) for t in (None, False))
    assert_close(auto, plain)
    with pytest.raises(ValueError, match="swap=True"):
        losses.TripletMarginLoss(swap=True, tiled=True)(emb, labels)
    with pytest.raises(ValueError, match="tiled must be"):
        miners.BatchHardMiner(tiled="yes")
    with pytest.raises(ValueError, match="tile_size"):
        miners.TripletMarginMiner(tile_size=0)


def test_subclass_terms_swap_and_sampled_triplets_follow_the_streamed_path():
    """The streamed batch-all uses the loss's own per_triplet_loss (SoftMarginTripletLoss: beta-scaled
    log(1 + e^x)); swap and sampled triplets use the streamed pair values."""
    emb, labels = batch(12)
    ref, ref_labels = make_batch(13, batch_size=17, dim=6, num_classes=5)

    def soft(tiled):
        loss = losses.SoftMarginTripletLoss(beta=3.0)
        loss.tiled, loss.tile_size = tiled, TILE
        return loss

    def sampled(tiled):
        torch.manual_seed(0)
        return losses.TripletMarginLoss(margin=0.5, triplets_per_anchor=3, tiled=tiled, tile_size=TILE)

    swap_cases = {
        "soft-margin": (soft, None),
        "swap+batch-hard": (lambda t: losses.TripletMarginLoss(margin=0.3, swap=True, tiled=t, tile_size=TILE),
                            lambda t: miners.BatchHardMiner(tiled=t, tile_size=TILE)),
        "sampled": (sampled, None),
    }
    for name, (make_loss, make_miner) in swap_cases.items():
        for mode in ("self", "ref_emb"):
            streamed, plain = (run(make_loss, make_miner, mode, emb, labels, ref, ref_labels, t) for t in (True, False))
            assert plain[0] > 0, name
            assert_close(streamed[0], plain[0], what=f"{name} {mode} value")
            for a, b in zip(streamed[1], plain[1]):
                assert_close(a, b, what=f"{name} {mode} gradient")

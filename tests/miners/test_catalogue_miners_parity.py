"""AngularMiner, HDCMiner, UniformHistogramMiner and EmbeddingsAlreadyPackagedAsTriplets against PML:
the same index tuples in PML's order (for UniformHistogramMiner under the same seed), the same statistics.

Legend: B batch, R reference rows, D embedding size.
"""

import pytest
import torch

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

import dmlscale.miners as ours  # noqa: E402
from tests.miners.test_miners_parity import (  # noqa: E402
    COUNT_STATS, REF_MODES, assert_same_indices, assert_same_stats, batch_and_ref, check_miner, run_both,
)
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, make_batch, make_distances  # noqa: E402

ANGLE_STATS = ("average_angle", "average_angle_above_threshold", "average_angle_below_threshold", "min_angle",
               "max_angle", "std_of_angle")


# -- AngularMiner -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("angle", [20, 35, 45])
@pytest.mark.parametrize("seed", [0, 1])
def test_angular_miner(angle, ref_mode, seed):
    mine = check_miner("AngularMiner", ("LpDistance", dict(p=2, power=1, normalize_embeddings=True)), ref_mode,
                       ANGLE_STATS + ("angle",), seed=seed, angle=angle)
    if ref_mode == "self":
        assert len(mine[0]) < 12 * 3 * 8, "the angle should select a proper subset"


@pytest.mark.parametrize("ref_mode", REF_MODES)
def test_angular_miner_default_and_float32_and_scaled_embeddings(ref_mode):
    """The angle is measured on the raw embeddings (PML's choice), so a scale changes nothing and
    float32 follows PML's float32."""
    emb_BD, labels_B, ref_kwargs = batch_and_ref(ref_mode, seed=5)
    for scale, dtype in [(1.0, torch.float64), (7.5, torch.float64), (1.0, torch.float32)]:
        kwargs = {k: (v * scale).to(dtype) if k == "ref_emb" else v for k, v in ref_kwargs.items()}
        ours_miner = ours.AngularMiner(collect_stats=True)
        pml_miner = pml_miners.AngularMiner(collect_stats=True)
        mine, theirs = run_both(ours_miner, pml_miner, (emb_BD * scale).to(dtype), labels_B, kwargs)
        assert len(mine[0]) > 0
        assert_same_indices(mine, theirs)
        assert_same_stats(ours_miner, pml_miner, COUNT_STATS + ANGLE_STATS + ("angle",))


def test_angular_miner_angle_extremes_and_one_class():
    emb_BD, labels_B, _ = batch_and_ref("self", seed=2)
    for angle, labels in [(0, labels_B), (89.9, labels_B), (20, torch.zeros_like(labels_B))]:
        ours_miner = ours.AngularMiner(angle=angle, collect_stats=True)
        pml_miner = pml_miners.AngularMiner(angle=angle, collect_stats=True)
        mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels, {})
        assert_same_indices(mine, theirs)
        assert_same_stats(ours_miner, pml_miner, COUNT_STATS + ANGLE_STATS)


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS[1:], ids=DISTANCE_IDS[1:])
def test_angular_miner_rejects_other_distances(setting):
    ours_dist, pml_dist = make_distances(*setting)
    with pytest.raises(AssertionError):
        pml_miners.AngularMiner(distance=pml_dist)
    with pytest.raises(ValueError, match="AngularMiner requires"):
        ours.AngularMiner(distance=ours_dist)


# -- HDCMiner ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("filter_percentage", [0.5, 0.3, 1.0, 0.0])
def test_hdc_miner(filter_percentage, setting, ref_mode):
    mine = check_miner("HDCMiner", setting, ref_mode, ("filter_percentage",), min_found=0,
                       filter_percentage=filter_percentage)
    if filter_percentage > 0:
        assert len(mine[0]) > 0 and len(mine[2]) > 0


@pytest.mark.parametrize("external", ["triplets", "pairs"])
@pytest.mark.parametrize("setting", [DISTANCE_SETTINGS[0], DISTANCE_SETTINGS[6]], ids=[DISTANCE_IDS[0], DISTANCE_IDS[6]])
def test_hdc_miner_cascades_an_external_tuple(setting, external):
    """set_idx_externally: every later call filters the previous result further, until reset_idx."""
    emb_BD, labels_B, _ = batch_and_ref("self", seed=1)
    source = ours.TripletMarginMiner(margin=0.5) if external == "triplets" else ours.PairMarginMiner()
    tuple_given = source(emb_BD, labels_B)
    ours_dist, pml_dist = make_distances(*setting)
    ours_miner, pml_miner = ours.HDCMiner(distance=ours_dist), pml_miners.HDCMiner(distance=pml_dist)
    ours_miner.set_idx_externally(tuple_given, labels_B)
    pml_miner.set_idx_externally(tuple_given, labels_B)
    sizes = []
    for _ in range(3):
        mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels_B, {})
        assert_same_indices(mine, theirs)
        sizes.append(len(mine[0]))
    assert sizes[0] > sizes[1] > sizes[2] > 0
    ours_miner.reset_idx()
    pml_miner.reset_idx()
    assert_same_indices(*run_both(ours_miner, pml_miner, emb_BD, labels_B, {}))


# -- UniformHistogramMiner --------------------------------------------------------------------------
def check_pairs_are_valid(mined, labels_B, ref_labels_R, self_rows):
    a1, p, a2, n = mined
    assert torch.all(labels_B[a1] == ref_labels_R[p]) and torch.all(labels_B[a2] != ref_labels_R[n])
    if self_rows:
        assert torch.all(a1 != p)


@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("config", [dict(), dict(num_bins=7, pos_per_bin=3, neg_per_bin=5), dict(num_bins=1)],
                         ids=["default", "7-bins", "1-bin"])
def test_uniform_histogram_miner_same_seed(config, setting, ref_mode):
    """PML's sampling is reproduced draw for draw: under the same seed, the same pairs in the same order."""
    emb_BD, labels_B, ref_kwargs = batch_and_ref(ref_mode, seed=3)
    ours_dist, pml_dist = make_distances(*setting)
    ours_miner = ours.UniformHistogramMiner(distance=ours_dist, collect_stats=True, **config)
    pml_miner = pml_miners.UniformHistogramMiner(distance=pml_dist, collect_stats=True, **config)
    for seed in (0, 1):
        mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels_B, ref_kwargs, seed=seed)
        assert_same_indices(mine, theirs)
        assert_same_stats(ours_miner, pml_miner, COUNT_STATS + ("pos_per_bin", "neg_per_bin"))
    check_pairs_are_valid(mine, labels_B, ref_kwargs.get("ref_labels", labels_B), ref_mode == "self")


def test_uniform_histogram_miner_draws_per_bin_from_every_nonempty_bin():
    """The structural guarantee: each non-empty bin of each kind gives exactly `*_per_bin` pairs, from that bin."""
    emb_BD, labels_B = make_batch(4, batch_size=30, dim=6, num_classes=4)
    miner = ours.UniformHistogramMiner(num_bins=10, pos_per_bin=4, neg_per_bin=6)
    torch.manual_seed(0)
    a1, p, a2, n = miner(emb_BD, labels_B)
    mat_BB = miner.distance(emb_BD)
    same_BB = labels_B[:, None] == labels_B[None, :]
    for (anchors, others), mask, per_bin in [((a1, p), same_BB & ~torch.eye(30, dtype=torch.bool), 4),
                                             ((a2, n), ~same_BB, 6)]:
        values = mat_BB[mask]
        edges = torch.linspace(values.min(), values.max(), 11, dtype=values.dtype)
        occupied = sum(1 for i in range(10) if ((values >= edges[i]) & (values <= edges[i + 1])).any())
        drawn = mat_BB[anchors, others]
        assert len(drawn) == per_bin * occupied
        bin_of_draw = (torch.bucketize(drawn, edges, right=True) - 1).clamp(max=9)
        assert torch.equal(bin_of_draw, bin_of_draw.sort().values), "draws come bin by bin"
        assert torch.all(torch.bincount(bin_of_draw)[torch.bincount(bin_of_draw) > 0] == per_bin)


def test_uniform_histogram_miner_edge_cases_like_pml():
    emb_BD, labels_B, _ = batch_and_ref("self", seed=6)
    cases = [(emb_BD, torch.zeros_like(labels_B)),  # one class: no negatives
             (emb_BD, torch.arange(len(labels_B))),  # singletons: no positives
             (emb_BD[:1].repeat(12, 1), labels_B)]  # every distance equal: one bin holds everything
    for emb, labels in cases:
        mine, theirs = run_both(ours.UniformHistogramMiner(num_bins=5), pml_miners.UniformHistogramMiner(num_bins=5),
                                emb, labels, {}, seed=2)
        assert_same_indices(mine, theirs)


# -- EmbeddingsAlreadyPackagedAsTriplets -----------------------------------------------------------
@pytest.mark.parametrize("batch_size", [3, 9, 12])
def test_embeddings_already_packaged_as_triplets(batch_size):
    emb_BD, labels_B = make_batch(0, batch_size=batch_size, dim=4, num_classes=3)
    ours_miner, pml_miner = ours.EmbeddingsAlreadyPackagedAsTriplets(), pml_miners.EmbeddingsAlreadyPackagedAsTriplets()
    mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels_B, {})
    assert_same_indices(mine, theirs)
    assert mine[0].tolist() == list(range(0, batch_size, 3)) and ours_miner.num_triplets == batch_size // 3
    assert_same_stats(ours_miner, pml_miner, ["num_triplets"])


def test_embeddings_already_packaged_as_triplets_with_ref_emb_and_a_loss():
    """With ref_emb PML still indexes by the batch's own rows; a triplet loss then uses exactly those triplets."""
    from pytorch_metric_learning.losses import TripletMarginLoss as PMLTripletMarginLoss

    from dmlscale.losses import TripletMarginLoss
    emb_BD, labels_B = make_batch(1, batch_size=12, dim=4, num_classes=3)
    ref_kwargs = dict(ref_emb=emb_BD.flip(0), ref_labels=labels_B.flip(0))
    mine, theirs = run_both(ours.EmbeddingsAlreadyPackagedAsTriplets(), pml_miners.EmbeddingsAlreadyPackagedAsTriplets(),
                            emb_BD, labels_B, ref_kwargs)
    assert_same_indices(mine, theirs)
    ours_loss = TripletMarginLoss(margin=0.5)(emb_BD, labels_B, mine)
    pml_loss = PMLTripletMarginLoss(margin=0.5)(emb_BD, labels_B, theirs)
    assert ours_loss.item() == pytest.approx(pml_loss.item(), rel=1e-12)


def test_embeddings_already_packaged_as_triplets_needs_whole_triplets():
    emb_BD, labels_B = make_batch(0, batch_size=10, dim=4, num_classes=3)
    with pytest.raises(AssertionError):
        pml_miners.EmbeddingsAlreadyPackagedAsTriplets()(emb_BD, labels_B)
    with pytest.raises(ValueError, match="multiple of 3.*10 rows"):
        ours.EmbeddingsAlreadyPackagedAsTriplets()(emb_BD, labels_B)
    with pytest.raises(ValueError, match="ref_emb has 6 rows"):
        ours.EmbeddingsAlreadyPackagedAsTriplets()(emb_BD[:9], labels_B[:9], emb_BD[:6], labels_B[:6])


@pytest.mark.parametrize("build, match", [
    (lambda: ours.HDCMiner(filter_percentage=1.5), "1.5"),
    (lambda: ours.HDCMiner(filter_percentage=-0.1), "-0.1"),
    (lambda: ours.UniformHistogramMiner(num_bins=0), "num_bins"),
    (lambda: ours.UniformHistogramMiner(pos_per_bin=2.5), "2.5"),
    (lambda: ours.AngularMiner(angle="wide"), "'wide'"),
])
def test_bad_config_raises_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_miners_accept_query_ref_index():
    """A batch that is a block of its reference (rows 3..14 of R): no miner returns a self pair, and HDC
    with filter_percentage=1 keeps every positive pair except the self pairs, and every negative pair."""
    emb_RD, labels_R = make_batch(2, batch_size=15, dim=5, num_classes=3)
    rows = torch.arange(3, 15)
    for miner in (ours.AngularMiner(), ours.HDCMiner(filter_percentage=1.0), ours.UniformHistogramMiner()):
        mined = miner(emb_RD[rows], labels_R[rows], emb_RD, labels_R, query_ref_index=rows)
        assert not (mined[0] + 3 == mined[1]).any(), f"{type(miner).__name__} returned a self pair"
    a1, p, a2, n = ours.HDCMiner(filter_percentage=1.0)(emb_RD[rows], labels_R[rows], emb_RD, labels_R,
                                                         query_ref_index=rows)
    same_BR = labels_R[rows][:, None] == labels_R[None, :]
    assert len(a1) == int(same_BR.sum()) - len(rows) and len(a2) == int((~same_BR).sum())


# -- mine() called directly, as PML allows -------------------------------------------------------------
DIRECT = [("BatchEasyHardMiner", {}), ("BatchHardMiner", {}), ("TripletMarginMiner", dict(margin=0.3)),
          ("PairMarginMiner", {}), ("MultiSimilarityMiner", {}), ("DistanceWeightedMiner", {}), ("AngularMiner", {}),
          ("HDCMiner", {}), ("UniformHistogramMiner", {}), ("EmbeddingsAlreadyPackagedAsTriplets", {})]


@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("name, config", DIRECT, ids=[name for name, _ in DIRECT])
def test_mine_takes_pml_four_arguments(name, config, ref_mode):
    """`miner.mine(embeddings, labels, ref_emb, ref_labels)` without query_ref_index gives PML's tuple: the batch
    is its own reference (self pairs excluded) when ref_labels is labels, as PML's test `ref_labels is labels`."""
    emb_BD, labels_B, ref_kwargs = batch_and_ref(ref_mode, seed=8)
    ref_RD, ref_labels_R = ref_kwargs.get("ref_emb", emb_BD), ref_kwargs.get("ref_labels", labels_B)
    mined = []
    for miner in (getattr(ours, name)(**config), getattr(pml_miners, name)(**config)):
        torch.manual_seed(3)
        with torch.no_grad():
            mined.append(miner.mine(emb_BD, labels_B, ref_RD, ref_labels_R))
    assert_same_indices(*mined)
    if ref_mode == "self" and len(mined[0]) == 3 and name != "EmbeddingsAlreadyPackagedAsTriplets":
        assert not (mined[0][0] == mined[0][1]).any()

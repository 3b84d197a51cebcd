"""Every miner returns PML's index tuples (as sets, and in PML's order) and PML's statistics.

Legend: B batch, R reference rows, D embedding size.
"""

import math

import pytest
import torch

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

import dmlscale.miners as ours  # noqa: E402
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, make_batch, make_distances  # noqa: E402

REF_MODES = ["self", "ref_emb"]
STRATEGY_PAIRS = [
    (pos, neg)
    for pos in ("hard", "semihard", "easy", "all")
    for neg in ("hard", "semihard", "easy", "all")
    if not (pos == neg == "semihard") and {pos, neg} != {"semihard", "all"}
]
COUNT_STATS = ("num_pos_pairs", "num_neg_pairs", "num_triplets")


def clustered_batch(seed: int, batch_size: int, num_classes: int, dim: int = 5):
    """make_batch shifted towards one centre per class: a mix of easy and hard pairs for every miner."""
    emb_BD, labels_B = make_batch(seed, batch_size=batch_size, dim=dim, num_classes=num_classes)
    centres_CD = torch.randn(4, dim, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return emb_BD + 1.2 * centres_CD[labels_B], labels_B


def batch_and_ref(ref_mode: str, seed: int = 0):
    """A batch with several positives per class; with ref_mode 'ref_emb', also a larger reference batch."""
    emb_BD, labels_B = clustered_batch(seed, 12, 3)
    if ref_mode == "self":
        return emb_BD, labels_B, {}
    ref_RD, ref_labels_R = clustered_batch(seed + 1000, 15, 4)
    return emb_BD, labels_B, dict(ref_emb=ref_RD, ref_labels=ref_labels_R)


def as_set(indices):
    return sorted(set(zip(*[x.tolist() for x in indices])))


def assert_same_indices(ours_tuple, pml_tuple, *, exact_order: bool = True):
    assert len(ours_tuple) == len(pml_tuple), f"tuple arity {len(ours_tuple)} vs PML {len(pml_tuple)}"
    if len(ours_tuple) == 4:  # positive and negative pairs are independent sets
        groups = [(ours_tuple[:2], pml_tuple[:2]), (ours_tuple[2:], pml_tuple[2:])]
    else:
        groups = [(ours_tuple, pml_tuple)]
    for mine, theirs in groups:
        assert as_set(mine) == as_set(theirs), f"index sets differ:\nours {as_set(mine)}\nPML  {as_set(theirs)}"
    for x, y in zip(ours_tuple, pml_tuple):
        assert x.dtype == torch.long
        if exact_order:
            assert torch.equal(x, y.to(torch.long)), f"order differs: ours {x.tolist()} vs PML {y.tolist()}"


def assert_same_stats(ours_miner, pml_miner, names):
    for name in names:
        mine, theirs = float(getattr(ours_miner, name)), float(getattr(pml_miner, name))
        if math.isnan(theirs):
            assert math.isnan(mine), f"{name}: ours {mine} vs PML nan"
        else:
            assert mine == pytest.approx(theirs, rel=1e-12, abs=1e-12), f"{name}: ours {mine} vs PML {theirs}"


def run_both(ours_miner, pml_miner, emb_BD, labels_B, ref_kwargs, seed=None):
    outputs = []
    for miner in (ours_miner, pml_miner):
        if seed is not None:
            torch.manual_seed(seed)
        outputs.append(miner(emb_BD, labels_B, **ref_kwargs))
    return outputs


def check_miner(name, setting, ref_mode, stat_names=(), min_found=1, seed=0, **config):
    """Our and PML's miner on the same batch: equal tuples (order included), equal stats."""
    emb_BD, labels_B, ref_kwargs = batch_and_ref(ref_mode, seed)
    ours_dist, pml_dist = make_distances(*setting)
    ours_miner = getattr(ours, name)(distance=ours_dist, collect_stats=True, **config)
    pml_miner = getattr(pml_miners, name)(distance=pml_dist, collect_stats=True, **config)
    mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels_B, ref_kwargs)
    assert_same_indices(mine, theirs)
    assert len(mine[0]) + (len(mine[2]) if len(mine) == 4 else 0) >= min_found, "test batch mined nothing"
    assert_same_stats(ours_miner, pml_miner, COUNT_STATS + tuple(stat_names))
    return mine


def value_quantiles(setting, ref_mode, qs):
    emb_BD, _, ref_kwargs = batch_and_ref(ref_mode)
    mat_BR = make_distances(*setting)[0](emb_BD, ref_kwargs.get("ref_emb"))
    return [mat_BR.flatten().quantile(q).item() for q in qs]


# -- BatchEasyHardMiner / BatchHardMiner -------------------------------------------------------------
EASY_HARD_STATS = ("easiest_triplet", "hardest_triplet", "easiest_pos_pair", "hardest_pos_pair",
                   "easiest_neg_pair", "hardest_neg_pair")


@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("strategies", STRATEGY_PAIRS, ids=[f"{p}-{n}" for p, n in STRATEGY_PAIRS])
def test_batch_easy_hard_miner(strategies, setting, ref_mode):
    pos, neg = strategies
    check_miner("BatchEasyHardMiner", setting, ref_mode, EASY_HARD_STATS, pos_strategy=pos, neg_strategy=neg)


@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("strategies", [("hard", "semihard"), ("semihard", "easy"), ("easy", "all"), ("all", "hard")],
                         ids=lambda s: "-".join(s))
def test_batch_easy_hard_miner_allowed_ranges(strategies, setting, ref_mode):
    low, mid_low, mid_high, high = value_quantiles(setting, ref_mode, [0.1, 0.3, 0.7, 0.9])
    pos, neg = strategies
    check_miner("BatchEasyHardMiner", setting, ref_mode, EASY_HARD_STATS, pos_strategy=pos, neg_strategy=neg,
                allowed_pos_range=(low, mid_high), allowed_neg_range=(mid_low, high))


@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_batch_hard_miner(setting, ref_mode):
    a, p, n = check_miner("BatchHardMiner", setting, ref_mode, EASY_HARD_STATS)
    assert len(a) == 12, "every anchor has a positive and a negative"


def test_batch_hard_miner_against_loop():
    """Independent check: the farthest positive and closest negative, found anchor by anchor."""
    emb_BD, labels_B, _ = batch_and_ref("self", seed=4)
    a, p, n = ours.BatchHardMiner()(emb_BD, labels_B)
    dist_BB = torch.cdist(torch.nn.functional.normalize(emb_BD), torch.nn.functional.normalize(emb_BD))
    expected = []
    for i in range(len(labels_B)):
        pos = [j for j in range(len(labels_B)) if j != i and labels_B[j] == labels_B[i]]
        neg = [k for k in range(len(labels_B)) if labels_B[k] != labels_B[i]]
        expected.append((i, max(pos, key=lambda j: dist_BB[i, j]), min(neg, key=lambda k: dist_BB[i, k])))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == expected


# -- TripletMarginMiner -----------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("type_of_triplets", ["all", "hard", "semihard", "easy"])
def test_triplet_margin_miner(type_of_triplets, setting, ref_mode):
    # a margin on the scale of the distance, so every type selects a proper, non-empty subset
    low, high = value_quantiles(setting, ref_mode, [0.25, 0.75])
    for margin in (0.2, (high - low) / 2):
        check_miner("TripletMarginMiner", setting, ref_mode, ("avg_triplet_margin", "pos_pair_dist", "neg_pair_dist"),
                    min_found=0, margin=margin, type_of_triplets=type_of_triplets)
    found = check_miner("TripletMarginMiner", setting, ref_mode, (), margin=(high - low) / 2,
                        type_of_triplets=type_of_triplets)
    num_triplets = 12 * 3 * 8 if ref_mode == "self" else None
    if num_triplets is not None:
        assert len(found[0]) < num_triplets, "margin should select a proper subset"


# -- PairMarginMiner --------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_pair_margin_miner(setting, ref_mode):
    low, mid, high = value_quantiles(setting, ref_mode, [0.3, 0.5, 0.7])
    for pos_margin, neg_margin in [(0.2, 0.8), (low, high), (high, low), (mid, mid)]:
        check_miner("PairMarginMiner", setting, ref_mode, ("pos_pair_dist", "neg_pair_dist"),
                    pos_margin=pos_margin, neg_margin=neg_margin)


# -- MultiSimilarityMiner ---------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("epsilon", [0.1, 0.5])
def test_multi_similarity_miner(epsilon, setting, ref_mode):
    check_miner("MultiSimilarityMiner", setting, ref_mode, epsilon=epsilon)


def test_multi_similarity_default_distance_is_cosine():
    emb_BD, labels_B, _ = batch_and_ref("self", seed=2)
    mine, theirs = run_both(ours.MultiSimilarityMiner(), pml_miners.MultiSimilarityMiner(), emb_BD, labels_B, {})
    assert type(ours.MultiSimilarityMiner().distance).__name__ == "CosineSimilarity"
    assert_same_indices(mine, theirs)


# -- DistanceWeightedMiner --------------------------------------------------------------------------
@pytest.mark.parametrize("ref_mode", REF_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cutoffs", [dict(), dict(cutoff=0.8, nonzero_loss_cutoff=1.6)], ids=["default", "custom"])
@pytest.mark.parametrize("dim", [5, 32])
def test_distance_weighted_miner_same_seed(cutoffs, seed, ref_mode, dim):
    emb_BD, labels_B = make_batch(seed, batch_size=12, dim=dim, num_classes=3)
    ref_kwargs = {}
    if ref_mode == "ref_emb":
        ref_RD, ref_labels_R = make_batch(seed + 1000, batch_size=15, dim=dim, num_classes=4)
        ref_kwargs = dict(ref_emb=ref_RD, ref_labels=ref_labels_R)
    ours_miner = ours.DistanceWeightedMiner(collect_stats=True, **cutoffs)
    pml_miner = pml_miners.DistanceWeightedMiner(collect_stats=True, **cutoffs)
    mine, theirs = run_both(ours_miner, pml_miner, emb_BD, labels_B, ref_kwargs, seed=seed + 7)
    assert len(mine[0]) > 0
    assert_same_indices(mine, theirs)
    assert_same_stats(ours_miner, pml_miner, COUNT_STATS)
    assert torch.all(labels_B[mine[0]] != (ref_kwargs.get("ref_labels", labels_B))[mine[2]])


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS[1:], ids=DISTANCE_IDS[1:])
def test_distance_weighted_miner_rejects_other_distances(setting):
    ours_dist, pml_dist = make_distances(*setting)
    with pytest.raises(AssertionError):
        pml_miners.DistanceWeightedMiner(distance=pml_dist)
    with pytest.raises(ValueError, match="DistanceWeightedMiner requires"):
        ours.DistanceWeightedMiner(distance=ours_dist)


# -- counts without collect_stats, bad configs, bad inputs ------------------------------------------
@pytest.mark.parametrize("name", ["BatchHardMiner", "PairMarginMiner", "TripletMarginMiner", "MultiSimilarityMiner"])
def test_counts_recorded_without_collect_stats(name):
    emb_BD, labels_B, ref_kwargs = batch_and_ref("ref_emb", seed=3)
    ours_miner, pml_miner = getattr(ours, name)(), getattr(pml_miners, name)()
    run_both(ours_miner, pml_miner, emb_BD, labels_B, ref_kwargs)
    # PML sets the counts of the tuple it returned even without collect_stats (and only those)
    set_by_pml = [n for n in COUNT_STATS if hasattr(pml_miner, n)]
    assert set_by_pml and all(getattr(pml_miner, n) > 0 for n in set_by_pml)
    assert_same_stats(ours_miner, pml_miner, set_by_pml)


@pytest.mark.parametrize("build, match", [
    (lambda: ours.TripletMarginMiner(type_of_triplets="foo"), "'foo'"),
    (lambda: ours.TripletMarginMiner(margin="big"), "'big'"),
    (lambda: ours.BatchEasyHardMiner(pos_strategy="hardest"), "'hardest'"),
    (lambda: ours.BatchEasyHardMiner(neg_strategy="medium"), "'medium'"),
    (lambda: ours.BatchEasyHardMiner(pos_strategy="semihard", neg_strategy="semihard"), "semihard"),
    (lambda: ours.BatchEasyHardMiner(pos_strategy="semihard", neg_strategy="all"), "'all'"),
    (lambda: ours.BatchEasyHardMiner(pos_strategy="all", neg_strategy="semihard"), "'all'"),
    (lambda: ours.BatchEasyHardMiner(allowed_pos_range=(1.0, 0.5)), r"\(1.0, 0.5\)"),
    (lambda: ours.BatchEasyHardMiner(allowed_neg_range=0.5), "0.5"),
    (lambda: ours.BatchHardMiner(pos_strategy="easy"), "pos_strategy"),
    (lambda: ours.PairMarginMiner(neg_margin=None), "None"),
    (lambda: ours.MultiSimilarityMiner(epsilon="x"), "'x'"),
    (lambda: ours.DistanceWeightedMiner(cutoff=1.5, nonzero_loss_cutoff=1.4), "1.4"),
])
def test_bad_config_raises_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_raise_value_error():
    emb_BD, labels_B, ref_kwargs = batch_and_ref("ref_emb")
    miner = ours.BatchHardMiner()
    with pytest.raises(ValueError, match="labels"):
        miner(emb_BD, None)
    with pytest.raises(ValueError, match="ref_labels"):
        miner(emb_BD, labels_B, ref_emb=ref_kwargs["ref_emb"])
    with pytest.raises(ValueError, match="entries"):
        miner(emb_BD, labels_B[:-1])


def test_miners_do_not_track_gradients():
    emb_BD, labels_B, _ = batch_and_ref("self")
    emb_BD.requires_grad_(True)
    for miner in (ours.BatchHardMiner(), ours.TripletMarginMiner(), ours.MultiSimilarityMiner()):
        assert all(not x.requires_grad for x in miner(emb_BD, labels_B))


def test_single_class_and_singletons_mine_nothing_like_pml():
    emb_BD = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for labels_B in (torch.zeros(6, dtype=torch.long), torch.arange(6)):
        for name in ("BatchHardMiner", "TripletMarginMiner", "PairMarginMiner", "MultiSimilarityMiner"):
            mine, theirs = run_both(getattr(ours, name)(), getattr(pml_miners, name)(), emb_BD, labels_B, {})
            assert_same_indices(mine, theirs)

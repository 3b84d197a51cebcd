"""`query_ref_index`: which reference row is the query row itself, given explicitly.

A block of rows [s, e) of a batch, compared against the whole batch with query_ref_index = arange(s, e),
must give exactly the per-anchor losses / mined tuples of the full batch restricted to those anchors
(this is what the distributed wrapper and cross-batch memory rely on).
"""

import pytest
import torch

from dmlscale import indices
from dmlscale.losses import (
    AngularLoss,
    BatchHardTripletLoss,
    CircleLoss,
    ContrastiveLoss,
    DoNothingReducer,
    FastAPLoss,
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    MultiSimilarityLoss,
    NCALoss,
    NPairsLoss,
    NTXentLoss,
    PNPLoss,
    RankedListLoss,
    SignalToNoiseRatioContrastiveLoss,
    SmoothAPLoss,
    SupConLoss,
    ThresholdConsistentMarginLoss,
    TripletMarginLoss,
    TupletMarginLoss,
)
from dmlscale.miners import (
    BatchEasyHardMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
)

BLOCKS = [(0, 4), (3, 9), (9, 14)]


def batch(seed: int = 0, num_rows: int = 14, dim: int = 6, num_classes: int = 3, singletons=(2, 6, 11)):
    """A float64 batch; rows in `singletons` get a class of their own (one in each of BLOCKS), so the
    only same-label reference row of such an anchor is itself: counting it would show."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(num_rows, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (num_rows,), generator=gen)
    for k, row in enumerate(r for r in singletons if r < num_rows):
        labels[row] = num_classes + k
    return emb, labels


LOSSES = {
    "contrastive": lambda: ContrastiveLoss(pos_margin=0.1, neg_margin=0.9, reducer=DoNothingReducer()),
    "triplet": lambda: TripletMarginLoss(margin=0.3, reducer=DoNothingReducer()),
    "triplet_swap": lambda: TripletMarginLoss(margin=0.3, swap=True, reducer=DoNothingReducer()),
    "ntxent": lambda: NTXentLoss(temperature=0.5, reducer=DoNothingReducer()),
    "supcon": lambda: SupConLoss(temperature=0.5, reducer=DoNothingReducer()),
    "multisim": lambda: MultiSimilarityLoss(reducer=DoNothingReducer()),
    "circle": lambda: CircleLoss(reducer=DoNothingReducer()),
    "nca": lambda: NCALoss(reducer=DoNothingReducer()),
    "batch_hard": lambda: BatchHardTripletLoss(margin=0.3, reducer=DoNothingReducer()),
    "lifted": lambda: LiftedStructureLoss(reducer=DoNothingReducer()),
    "generalized_lifted": lambda: GeneralizedLiftedStructureLoss(reducer=DoNothingReducer()),
    "angular": lambda: AngularLoss(reducer=DoNothingReducer()),
    "npairs": lambda: NPairsLoss(reducer=DoNothingReducer()),
    "tuplet": lambda: TupletMarginLoss(scale=16, reducer=DoNothingReducer()),
    "snr_contrastive": lambda: SignalToNoiseRatioContrastiveLoss(reducer=DoNothingReducer()),
    "fast_ap": lambda: FastAPLoss(reducer=DoNothingReducer()),
    "ranked_list": lambda: RankedListLoss(margin=0.4, Tn=4, reducer=DoNothingReducer()),
    "tcm": lambda: ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.0, reducer=DoNothingReducer()),
    "pnp": lambda: PNPLoss(anneal=0.1, reducer=DoNothingReducer()),
    "smooth_ap": lambda: SmoothAPLoss(temperature=0.1, reducer=DoNothingReducer()),
}

MINERS = {
    "batch_hard": lambda: BatchHardMiner(),
    "batch_easy_hard": lambda: BatchEasyHardMiner(),
    "batch_all_hard": lambda: BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard"),
    "triplet_margin": lambda: TripletMarginMiner(margin=0.5),
    "triplet_margin_easy": lambda: TripletMarginMiner(margin=0.5, type_of_triplets="easy"),
    "pair_margin": lambda: PairMarginMiner(pos_margin=0.6, neg_margin=1.2),
    "pair_margin_all_pos": lambda: PairMarginMiner(pos_margin=-1.0, neg_margin=1.2),
    "multisim": lambda: MultiSimilarityMiner(epsilon=0.1),
    "multisim_wide": lambda: MultiSimilarityMiner(epsilon=2.0),
}


def keyed_losses(loss_dict: dict, start: int, stop: int):
    """{name: (keys_K x m, losses_K)} for the anchors in [start, stop), anchors shifted by -start."""
    out = {}
    for name, entry in loss_dict.items():
        assert entry["reduction_type"] != "already_reduced", f"{name} gave no per-element losses"
        idx = entry["indices"]
        idx = (idx,) if torch.is_tensor(idx) else tuple(idx)
        keep = (idx[0] >= start) & (idx[0] < stop)
        keys = torch.stack([idx[0][keep] - start] + [x[keep] for x in idx[1:]], dim=1)
        out[name] = (keys, entry["losses"][keep])
    return out


def block_call(fn, emb, labels, start, stop, **kwargs):
    rows = torch.arange(start, stop)
    return fn(emb[rows], labels[rows], ref_emb=emb, ref_labels=labels, query_ref_index=rows, **kwargs)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_on_a_block_equals_full_batch_restricted(name, block):
    if name == "npairs" and block == BLOCKS[2]:
        pytest.skip("no NPairsLoss anchor (a class's first row) lies in the last block: nothing to compare")
    emb, labels = batch()
    loss = LOSSES[name]()
    full = keyed_losses(loss(emb, labels), *block)
    part = keyed_losses(block_call(loss, emb, labels, *block), 0, block[1] - block[0])
    assert full.keys() == part.keys()
    assert sum(len(k) for k, _ in full.values()) > 0
    for key in full:
        assert torch.equal(full[key][0], part[key][0]), f"{name}/{key}: different index tuples"
        torch.testing.assert_close(part[key][1], full[key][1], rtol=1e-12, atol=1e-12)


def restrict_tuple(mined, start: int, stop: int):
    """The anchors of `mined` in [start, stop), shifted by -start (pair tuples restricted side by side)."""
    groups = [mined] if len(mined) == 3 else [mined[:2], mined[2:]]
    out = []
    for group in groups:
        keep = (group[0] >= start) & (group[0] < stop)
        out += [group[0][keep] - start] + [x[keep] for x in group[1:]]
    return tuple(out)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", sorted(MINERS))
def test_miner_on_a_block_equals_full_batch_restricted(name, block):
    emb, labels = batch(seed=1)
    miner = MINERS[name]()
    full = miner(emb, labels)
    assert len(full[0]) > 0
    expected = restrict_tuple(full, *block)
    got = block_call(miner, emb, labels, *block)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.equal(x, y), f"{name}: {x.tolist()} != {y.tolist()}"


def test_without_the_index_the_block_counts_its_own_rows_as_positives():
    """The check above is sensitive: with ref_emb and no index (PML), self pairs become positives."""
    _, labels = batch()
    rows = torch.arange(3, 9)
    a1, p, _, _ = indices.all_pairs(labels[rows], labels)
    assert bool((p == a1 + 3).any())
    a1, p, _, _ = indices.all_pairs(labels[rows], labels, rows)
    assert not bool((p == a1 + 3).any())


def test_explicit_defaults_match_implicit():
    emb, labels = batch(seed=2)
    loss = ContrastiveLoss(reducer=DoNothingReducer())
    implicit = loss(emb, labels)
    explicit = loss(emb, labels, query_ref_index=torch.arange(len(emb)))
    as_ref = loss(emb, labels, ref_emb=emb.clone(), ref_labels=labels.clone(), query_ref_index=torch.arange(len(emb)))
    for other in (explicit, as_ref):
        for name in implicit:
            for x, y in zip(implicit[name]["indices"], other[name]["indices"]):
                assert torch.equal(x, y)
            torch.testing.assert_close(implicit[name]["losses"], other[name]["losses"])
    # ref_emb without an index: PML's semantics, no self rows (the diagonal is a positive)
    no_self = loss(emb, labels, ref_emb=emb, ref_labels=labels)
    assert len(no_self["pos_loss"]["losses"]) == len(implicit["pos_loss"]["losses"]) + len(emb)


def test_random_triplets_self_index_keeps_pml_draws():
    labels = batch(seed=3, num_rows=20)[1]
    torch.manual_seed(0)
    implicit = indices.random_triplets(labels, triplets_per_anchor=3)
    torch.manual_seed(0)
    explicit = indices.random_triplets(labels, labels.clone(), triplets_per_anchor=3,
                                       query_ref_index=torch.arange(len(labels)))
    for x, y in zip(implicit, explicit):
        assert torch.equal(x, y)


@pytest.mark.parametrize("block", BLOCKS)
def test_random_triplets_on_a_block_exclude_own_row_and_cover_the_rest(block):
    _, labels = batch(seed=4, num_rows=14)
    rows = torch.arange(*block)
    torch.manual_seed(0)
    a, p, n = indices.random_triplets(labels[rows], labels, triplets_per_anchor=200, query_ref_index=rows)
    assert len(a) > 0
    assert not bool((p == rows[a]).any()), "an anchor was drawn as its own positive"
    assert torch.equal(labels[rows][a], labels[p])
    assert not bool((labels[rows][a] == labels[n]).any())
    for i in range(len(rows)):
        candidates = set(torch.where(labels == labels[rows[i]])[0].tolist()) - {int(rows[i])}
        drawn = set(p[a == i].tolist())
        assert drawn == candidates, f"anchor {i}: drew {sorted(drawn)}, candidates {sorted(candidates)}"


def test_sampling_losses_and_miners_never_pick_self_on_a_block():
    emb, labels = batch(seed=5)
    rows = torch.arange(4, 11)
    torch.manual_seed(0)
    loss = TripletMarginLoss(margin=10.0, triplets_per_anchor=5, reducer=DoNothingReducer())
    out = loss(emb[rows], labels[rows], ref_emb=emb, ref_labels=labels, query_ref_index=rows)["loss"]
    a, p, _ = out["indices"]
    assert len(a) > 0 and not bool((p == rows[a]).any())
    miner = DistanceWeightedMiner(cutoff=0.0, nonzero_loss_cutoff=2.5)
    a, p, n = miner(emb[rows], labels[rows], emb, labels, query_ref_index=rows)
    assert len(a) > 0 and not bool((p == rows[a]).any())


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([0, 1, 99]), r"99"),
        (torch.tensor([0, -2, 1]), r"-2"),
        (torch.tensor([0, 1]), r"2 entries"),
        (torch.tensor([0.0, 1.0, 2.0]), r"integer"),
        (torch.tensor([[0, 1, 2]]), r"1-D"),
    ],
)
def test_bad_query_ref_index_is_named(bad, message):
    emb, labels = batch(num_rows=12)
    with pytest.raises(ValueError, match=message):
        ContrastiveLoss()(emb[:3], labels[:3], ref_emb=emb, ref_labels=labels, query_ref_index=bad)
    with pytest.raises(ValueError, match=message):
        BatchHardMiner()(emb[:3], labels[:3], emb, labels, query_ref_index=bad)


def test_index_out_of_range_without_ref_names_the_batch():
    emb, labels = batch(num_rows=5)
    with pytest.raises(ValueError, match=r"\[-1, 5\).*=5"):
        ContrastiveLoss()(emb, labels, query_ref_index=torch.tensor([0, 1, 2, 3, 5]))

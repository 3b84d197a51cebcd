"""ClassWeightedReducer, DivisorReducer and PerAnchorReducer equal PML's in value and gradient, with every
loss type each applies to (element, pos_pair, neg_pair, triplet), in every input mode PML supports."""

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
import pytorch_metric_learning.reducers as pml_reducers  # noqa: E402

import dmlscale.losses as ours  # noqa: E402
from tests.parity import INPUT_MODES, assert_close, make_batch, run_mode  # noqa: E402

WEIGHTS = [0.5, 2.0, 1.25]
# (loss name, options, the reduction types it produces)
LOSSES = [("TripletMarginLoss", dict(margin=0.4), "triplet"),
          ("ContrastiveLoss", dict(), "pos_pair + neg_pair"),
          ("NTXentLoss", dict(temperature=0.5), "pos_pair"),
          ("NCALoss", dict(), "element"),
          ("MultiSimilarityLoss", dict(), "element"),
          ("SupConLoss", dict(), "element")]
LOSS_IDS = [name for name, _, _ in LOSSES]


def both(loss_name, options, ours_reducer, pml_reducer):
    return (getattr(ours, loss_name)(reducer=ours_reducer, **options),
            getattr(pml_losses, loss_name)(reducer=pml_reducer, **options))


# -- ClassWeightedReducer ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_class_weighted_reducer(loss, mode):
    name, options, _ = loss
    if name == "MultiSimilarityLoss":
        pytest.skip("PML's terms have shape (B, 1) there, so its weighting broadcasts: "
                    "test_class_weighted_reducer_weights_each_term_where_pml_broadcasts")
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    ours_loss, pml_loss = both(name, options, ours.ClassWeightedReducer(weights), pml_reducers.ClassWeightedReducer(weights))
    run_mode(mode, ours_loss, pml_loss, seed=31)


def test_class_weighted_reducer_weights_each_term_where_pml_broadcasts():
    """Deliberate difference: PML's MultiSimilarityLoss returns its B terms as a (B, 1) tensor, so PML's
    ClassWeightedReducer multiplies it by the (B,) weights into a B x B matrix and returns
    mean(loss) * mean(w[y]); ours returns mean_i w[y_i] * loss_i, the reducer's formula."""
    emb_BD, labels_B = make_batch(31)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    terms_B = ours.MultiSimilarityLoss(reducer=ours.DoNothingReducer())(emb_BD, labels_B)["loss"]["losses"]
    mine = ours.MultiSimilarityLoss(reducer=ours.ClassWeightedReducer(weights))(emb_BD, labels_B)
    theirs = pml_losses.MultiSimilarityLoss(reducer=pml_reducers.ClassWeightedReducer(weights))(emb_BD, labels_B)
    assert_close(mine, (weights[labels_B] * terms_B).mean())
    assert_close(theirs, terms_B.mean() * weights[labels_B].mean())
    assert mine.item() == pytest.approx(1.7201127170748851, rel=1e-12)
    assert theirs.item() == pytest.approx(1.7915880532963346, rel=1e-12)


def test_class_weighted_reducer_takes_a_list_and_checks_labels():
    emb_BD, labels_B = make_batch(2)
    reducer = ours.ClassWeightedReducer(WEIGHTS)  # a list (a recipe's YAML), cast to the losses' dtype
    pml_value = pml_losses.TripletMarginLoss(reducer=pml_reducers.ClassWeightedReducer(torch.tensor(WEIGHTS)))(emb_BD, labels_B)
    assert_close(ours.TripletMarginLoss(reducer=reducer)(emb_BD, labels_B), pml_value)
    with pytest.raises(ValueError, match="2 weights but sees label 2"):
        ours.TripletMarginLoss(reducer=ours.ClassWeightedReducer([1.0, 2.0]))(emb_BD, labels_B)
    with pytest.raises(ValueError, match="weights must be a 1-D"):
        ours.ClassWeightedReducer([[1.0, 2.0]])


# -- DivisorReducer ---------------------------------------------------------------------------------
def loss_entries(seed: int):
    """Hand-made entries of every reduction type, with a divisor (as PML's MarginLoss / ProxyAnchorLoss give)."""
    gen = torch.Generator().manual_seed(seed)
    emb_BD, labels_B = make_batch(seed)
    emb_BD.requires_grad_(True)
    terms = emb_BD.pow(2).sum(dim=1)  # connected to the embeddings, so gradients can be compared
    idx = torch.randint(0, 12, (3, 12), generator=gen)
    entries = [
        {"losses": terms, "indices": idx[0], "reduction_type": "element", "divisor": 5},
        {"losses": terms, "indices": (idx[0], idx[1]), "reduction_type": "pos_pair", "divisor": torch.tensor(7)},
        {"losses": terms, "indices": (idx[0], idx[1]), "reduction_type": "neg_pair", "divisor": 3.5},
        {"losses": terms, "indices": (idx[0], idx[1], idx[2]), "reduction_type": "triplet", "divisor": torch.tensor(4)},
        {"losses": terms, "indices": idx[0], "reduction_type": "element", "divisor": 0},
        {"losses": terms.sum(), "indices": None, "reduction_type": "already_reduced"},
        {"losses": 0, "indices": None, "reduction_type": "already_reduced"},
    ]
    return emb_BD, labels_B, entries


@pytest.mark.parametrize("position", range(7))
def test_divisor_reducer_on_each_reduction_type(position):
    values, grads, divisors = [], [], []
    for reducer in (ours.DivisorReducer(collect_stats=True), pml_reducers.DivisorReducer(collect_stats=True)):
        emb_BD, labels_B, entries = loss_entries(4)
        out = reducer({"loss": entries[position]}, emb_BD, labels_B)
        out.backward()
        values.append(out.detach())
        grads.append(emb_BD.grad)
        divisors.append(float(reducer.divisor))
    assert_close(values[0], values[1])
    assert_close(grads[0], grads[1], what="gradient")
    assert divisors[0] == divisors[1]


@pytest.mark.parametrize("mode", ["labels", "triplets", "ref_emb"])
def test_divisor_reducer_with_pml_margin_loss_terms(mode):
    """PML's MarginLoss (triplet terms with a divisor, and a per-class beta regulariser of element terms)."""
    emb_BD, labels_B = make_batch(9)
    kwargs = {}
    if mode == "triplets":
        from tests.parity import triplet_tuple_from_labels
        kwargs["indices_tuple"] = triplet_tuple_from_labels(labels_B, 9)
    if mode == "ref_emb":
        kwargs["ref_emb"], kwargs["ref_labels"] = make_batch(10, batch_size=15)
    margin = pml_losses.MarginLoss(margin=0.3, learn_beta=True, num_classes=3, reducer=pml_reducers.DoNothingReducer())
    loss_dict = margin(emb_BD, labels_B, **kwargs)
    assert "divisor" in loss_dict["margin_loss"] and loss_dict["beta_reg_loss"]["reduction_type"] == "element"
    for name, info in loss_dict.items():
        mine = ours.DivisorReducer()({name: info}, emb_BD, labels_B)
        theirs = pml_reducers.DivisorReducer()({name: info}, emb_BD, labels_B)
        assert_close(mine, theirs, what=name)
    mine = ours.MultipleReducers({}, default_reducer=ours.DivisorReducer())(loss_dict, emb_BD, labels_B)
    theirs = pml_reducers.MultipleReducers({}, default_reducer=pml_reducers.DivisorReducer())(loss_dict, emb_BD, labels_B)
    assert_close(mine, theirs)


def test_divisor_reducer_needs_a_divisor():
    emb_BD, labels_B = make_batch(0)
    with pytest.raises(ValueError, match="DivisorReducer needs a 'divisor'"):
        ours.TripletMarginLoss(reducer=ours.DivisorReducer())(emb_BD, labels_B)


# -- PerAnchorReducer -------------------------------------------------------------------------------
PAIR_AND_ELEMENT = [loss for loss in LOSSES if loss[2] != "triplet"]


@pytest.mark.parametrize("inner", [None, "SumReducer", "AvgNonZeroReducer"])
@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("loss", PAIR_AND_ELEMENT, ids=[name for name, _, _ in PAIR_AND_ELEMENT])
def test_per_anchor_reducer(loss, mode, inner):
    name, options, _ = loss
    ours_inner, pml_inner = (None, None) if inner is None else (getattr(ours, inner)(), getattr(pml_reducers, inner)())
    ours_loss, pml_loss = both(name, options, ours.PerAnchorReducer(ours_inner), pml_reducers.PerAnchorReducer(pml_inner))
    run_mode(mode, ours_loss, pml_loss, seed=41)


def test_per_anchor_reducer_with_a_custom_aggregation():
    def row_max(values_BC, num_per_row_B):
        return values_BC.max(dim=1).values

    ours_loss, pml_loss = both("ContrastiveLoss", dict(pos_margin=0.1),
                               ours.PerAnchorReducer(aggregation_func=row_max),
                               pml_reducers.PerAnchorReducer(aggregation_func=row_max))
    run_mode("labels", ours_loss, pml_loss, seed=43)


def test_per_anchor_reducer_with_ref_emb_against_a_loop():
    """PML builds a B x B matrix, so a reference batch larger than the batch fails there; ours takes B x R:
    each anchor's mean over its pairs, 0 for an anchor without pairs, then the mean over anchors."""
    emb_BD, labels_B = make_batch(5, batch_size=6)
    ref_RD, ref_labels_R = make_batch(6, batch_size=11)
    loss_dict = ours.ContrastiveLoss(reducer=ours.DoNothingReducer())(emb_BD, labels_B, ref_emb=ref_RD,
                                                                      ref_labels=ref_labels_R)
    reduced = ours.ContrastiveLoss(reducer=ours.PerAnchorReducer())(emb_BD, labels_B, ref_emb=ref_RD,
                                                                     ref_labels=ref_labels_R)
    expected = 0
    for info in loss_dict.values():
        anchors = info["indices"][0]
        per_anchor = [info["losses"][anchors == i].mean() if (anchors == i).any() else torch.tensor(0.0)
                      for i in range(6)]
        expected = expected + torch.stack([x.double() for x in per_anchor]).mean()
    assert_close(reduced, expected)


def test_per_anchor_reducer_refuses_triplets_like_pml():
    emb_BD, labels_B = make_batch(0)
    with pytest.raises(NotImplementedError):
        pml_losses.TripletMarginLoss(reducer=pml_reducers.PerAnchorReducer())(emb_BD, labels_B)
    with pytest.raises(ValueError, match="does not support triplet"):
        ours.TripletMarginLoss(reducer=ours.PerAnchorReducer())(emb_BD, labels_B)

"""The margin-softmax classification losses (ArcFace, CosFace, large-margin softmax, SphereFace, sub-center
ArcFace, normalized softmax, P2SGrad) equal PML's in value and gradient w.r.t. the embeddings AND the class
weights (float64, 1e-10), with PML's weights copied into ours; plus PML's acceptance of distances, ref_emb,
indices_tuple, the weight / embedding regularizer sub-losses, statistics, get_logits and get_outliers.

Legend: B batch, C classes, D embedding size; emb_BD the embeddings, labels_B their classes.
"""

from __future__ import annotations

import math

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
import dmlscale.regularizers as ours_r
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, TOL, assert_close, make_distances

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
pml_r = pytest.importorskip("pytorch_metric_learning.regularizers")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

ANGULAR = ["ArcFaceLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss", "SphereFaceLoss", "SubCenterArcFaceLoss"]
WEIGHTED = ANGULAR + ["NormalizedSoftmaxLoss"]
ALL = WEIGHTED + ["P2SGradLoss"]
EMBEDDING_SIZE = 6


def weight_name(name: str) -> str:
    return "weight" if name == "P2SGradLoss" else "W"


def build_pair(name: str, num_classes: int = 5, embedding_size: int = EMBEDDING_SIZE, **kwargs):
    """(ours, PML's) in float64, ours holding a copy of PML's class weights. Options whose value is a
    (dmlscale, PML) pair of objects are split between the two."""
    def pick(side):
        return {k: (v[side] if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], torch.nn.Module) else v)
                for k, v in kwargs.items()}

    if name == "P2SGradLoss":
        ours_loss = ours.P2SGradLoss(embedding_size, num_classes, **pick(0))
        pml_loss = pml_losses.P2SGradLoss(embedding_size, num_classes, **pick(1))
    else:
        ours_loss = getattr(ours, name)(num_classes=num_classes, embedding_size=embedding_size, **pick(0))
        pml_loss = getattr(pml_losses, name)(num_classes=num_classes, embedding_size=embedding_size, **pick(1))
    ours_loss.double()
    pml_loss.double()
    getattr(ours_loss, weight_name(name)).data.copy_(getattr(pml_loss, weight_name(name)).data)
    return ours_loss, pml_loss


def make_inputs(seed: int, batch_size: int = 10, num_labels: int = 5, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    emb_BD = torch.randn(batch_size, EMBEDDING_SIZE, generator=gen, dtype=torch.float64) * scale
    labels_B = torch.randint(0, num_labels, (batch_size,), generator=gen)
    return emb_BD, labels_B


def compare(name: str, ours_loss, pml_loss, emb_BD, labels_B, *, self_reference: bool = False, **call) -> float:
    """Value, gradient w.r.t. the embeddings and w.r.t. the class weights agree; returns our value.
    self_reference: pass the batch itself as ref_emb (and its labels as ref_labels)."""
    results = []
    for loss in (ours_loss, pml_loss):
        weight = getattr(loss, weight_name(name))
        weight.grad = None
        leaf_BD = emb_BD.clone().requires_grad_(True)
        if self_reference:
            call = dict(call, ref_emb=leaf_BD, ref_labels=labels_B)
        value = loss(leaf_BD, labels_B, **call)
        value.backward()
        results.append((value.detach(), leaf_BD.grad, weight.grad.clone(), weight.detach().clone()))
    (v_ours, g_ours, gw_ours, w_ours), (v_pml, g_pml, gw_pml, w_pml) = results
    assert torch.isfinite(v_ours)
    assert_close(v_ours, v_pml, TOL, "loss value")
    assert_close(g_ours, g_pml, TOL, "gradient w.r.t. embeddings")
    assert_close(gw_ours, gw_pml, TOL, "gradient w.r.t. class weights")
    assert_close(w_ours, w_pml, TOL, "class weights after the call")
    return float(v_ours)


SETTINGS = {
    "ArcFaceLoss": [dict(), dict(margin=10, scale=30), dict(margin=60, scale=8), dict(margin=0, scale=1)],
    "CosFaceLoss": [dict(), dict(margin=0.1, scale=30), dict(margin=0.6, scale=4), dict(margin=-0.2, scale=1)],
    "LargeMarginSoftmaxLoss": [dict(), dict(margin=1), dict(margin=2, scale=3), dict(margin=3, scale=0.5),
                               dict(margin=6, scale=2)],
    "SphereFaceLoss": [dict(), dict(margin=1, scale=2), dict(margin=3, scale=5), dict(margin=5)],
    "SubCenterArcFaceLoss": [dict(), dict(sub_centers=1), dict(sub_centers=4, margin=15, scale=16)],
    "NormalizedSoftmaxLoss": [dict(), dict(temperature=1.0), dict(temperature=0.2)],
    "P2SGradLoss": [dict()],
}
CASES = [(name, kwargs) for name, settings in SETTINGS.items() for kwargs in settings]
CASE_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) for name, kwargs in CASES]


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_parity_settings(name, kwargs):
    for seed, scale in ((0, 1.0), (1, 5.0), (2, 0.2)):
        ours_loss, pml_loss = build_pair(name, **kwargs)
        emb_BD, labels_B = make_inputs(seed, scale=scale)
        assert compare(name, ours_loss, pml_loss, emb_BD, labels_B) > 1e-3


@pytest.mark.parametrize("name", ALL)
def test_parity_missing_classes_batch_of_one_and_repeated_calls(name):
    ours_loss, pml_loss = build_pair(name, num_classes=9)
    emb_BD, labels_B = make_inputs(3, batch_size=12, num_labels=3)  # classes 3..8 never appear
    compare(name, ours_loss, pml_loss, emb_BD, labels_B)
    compare(name, ours_loss, pml_loss, emb_BD * 2, labels_B.flip(0))  # same modules again (P2SGrad renormalises)
    emb_1D, labels_1 = make_inputs(4, batch_size=1, num_labels=9)
    compare(name, ours_loss, pml_loss, emb_1D, labels_1)
    compare(name, *build_pair(name, num_classes=1), emb_BD, torch.zeros_like(labels_B))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_initial_weights(name):
    torch.manual_seed(11)
    ours_loss = (ours.P2SGradLoss(8, 7) if name == "P2SGradLoss"
                 else getattr(ours, name)(num_classes=7, embedding_size=8))
    torch.manual_seed(11)
    pml_loss = (pml_losses.P2SGradLoss(8, 7) if name == "P2SGradLoss"
                else getattr(pml_losses, name)(num_classes=7, embedding_size=8))
    ours_w, pml_w = getattr(ours_loss, weight_name(name)), getattr(pml_loss, weight_name(name))
    assert ours_w.shape == pml_w.shape and torch.equal(ours_w.data, pml_w.data)


@pytest.mark.parametrize("name", WEIGHTED)
def test_weight_init_func(name):
    init = lambda w: torch.nn.init.constant_(w, 0.25)  # noqa: E731
    loss = getattr(ours, name)(num_classes=3, embedding_size=4, weight_init_func=init)
    assert torch.all(loss.W == 0.25)


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("tuple_kind", ["pairs", "triplets", "empty"])
def test_parity_indices_tuple_weights(name, tuple_kind):
    emb_BD, labels_B = make_inputs(5, batch_size=10, num_labels=4)
    gen = torch.Generator().manual_seed(6)
    num = {"pairs": 4, "triplets": 3, "empty": 3}[tuple_kind]
    size = 0 if tuple_kind == "empty" else 7
    tup = tuple(torch.randint(0, 10, (size,), generator=gen) for _ in range(num))
    ours_loss, pml_loss = build_pair(name)
    compare(name, ours_loss, pml_loss, emb_BD, labels_B, indices_tuple=tup)


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("reducer", ["SumReducer", "AvgNonZeroReducer", "MeanReducer"])
def test_parity_reducers(name, reducer):
    emb_BD, labels_B = make_inputs(7)
    ours_loss, pml_loss = build_pair(name, reducer=(getattr(ours, reducer)(), getattr(pml_reducers, reducer)()))
    compare(name, ours_loss, pml_loss, emb_BD, labels_B)


REGULARIZERS = {
    "LpRegularizer": dict(), "LpRegularizer-p1-power2": dict(p=1, power=2), "ZeroMeanRegularizer": dict(),
    "CenterInvariantRegularizer": dict(), "RegularFaceRegularizer": dict(),
}


def regularizer_pair(key: str):
    name, kwargs = key.split("-")[0], REGULARIZERS[key]
    return getattr(ours_r, name)(**kwargs), getattr(pml_r, name)(**kwargs)


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("key", sorted(REGULARIZERS))
def test_parity_weight_and_embedding_regularizers(name, key):
    emb_BD, labels_B = make_inputs(8, scale=2.0)
    ours_loss, pml_loss = build_pair(name, weight_regularizer=regularizer_pair(key), weight_reg_weight=0.7)
    assert ours_loss.sub_loss_names() == pml_loss.sub_loss_names() == ["loss", "weight_reg_loss"]
    compare(name, ours_loss, pml_loss, emb_BD, labels_B)
    ours_loss, pml_loss = build_pair(name, embedding_regularizer=regularizer_pair(key), embedding_reg_weight=0.3,
                                     weight_regularizer=regularizer_pair("LpRegularizer"))
    assert ours_loss.sub_loss_names() == pml_loss.sub_loss_names() == ["loss", "weight_reg_loss",
                                                                        "embedding_reg_loss"]
    compare(name, ours_loss, pml_loss, emb_BD, labels_B)


def test_parity_embedding_regularizer_on_p2sgrad_and_sparse_centers_on_subcenters():
    emb_BD, labels_B = make_inputs(9)
    ours_loss, pml_loss = build_pair("P2SGradLoss", embedding_regularizer=regularizer_pair("ZeroMeanRegularizer"),
                                     embedding_reg_weight=2.0)
    assert ours_loss.sub_loss_names() == pml_loss.sub_loss_names() == ["loss", "embedding_reg_loss"]
    compare("P2SGradLoss", ours_loss, pml_loss, emb_BD, labels_B)
    sparse = (ours_r.SparseCentersRegularizer(5, 3), pml_r.SparseCentersRegularizer(5, 3))
    ours_loss, pml_loss = build_pair("SubCenterArcFaceLoss", weight_regularizer=sparse, weight_reg_weight=0.5)
    compare("SubCenterArcFaceLoss", ours_loss, pml_loss, emb_BD, labels_B)


@pytest.mark.parametrize("name", WEIGHTED)
def test_regularizer_sub_losses_are_reduced_per_name(name):
    """MultipleReducers: each sub-loss reduced on its own, summed (PML's DoNothingReducer dict too)."""
    emb_BD, labels_B = make_inputs(10)
    ours_loss, pml_loss = build_pair(name, weight_regularizer=regularizer_pair("LpRegularizer"),
                                     embedding_regularizer=regularizer_pair("ZeroMeanRegularizer"),
                                     reducer=(ours.DoNothingReducer(), pml_reducers.DoNothingReducer()))
    ours_dict, pml_dict = ours_loss(emb_BD, labels_B), pml_loss(emb_BD, labels_B)
    assert list(ours_dict) == list(pml_dict)
    for key in pml_dict:
        assert ours_dict[key]["reduction_type"] == pml_dict[key]["reduction_type"]
        assert_close(ours_dict[key]["losses"], pml_dict[key]["losses"], TOL, key)


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_normalized_softmax_every_distance(setting):
    ours_dist, pml_dist = make_distances(*setting)
    for seed, scale in ((12, 1.0), (13, 3.0)):
        ours_loss, pml_loss = build_pair("NormalizedSoftmaxLoss", distance=(ours_dist, pml_dist), temperature=0.5)
        emb_BD, labels_B = make_inputs(seed, scale=scale)
        compare("NormalizedSoftmaxLoss", ours_loss, pml_loss, emb_BD, labels_B)


@pytest.mark.parametrize("name", ANGULAR)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_angular_losses_take_cosine_only(name, setting):
    ours_dist, pml_dist = make_distances(*setting)
    if setting[0] == "CosineSimilarity":
        ours_loss, pml_loss = build_pair(name, distance=(ours_dist, pml_dist))
        compare(name, ours_loss, pml_loss, *make_inputs(14))
        return
    with pytest.raises(AssertionError):
        getattr(pml_losses, name)(num_classes=3, embedding_size=4, distance=pml_dist)
    with pytest.raises(ValueError, match=f"{name} requires distance CosineSimilarity, got {setting[0]}"):
        getattr(ours, name)(num_classes=3, embedding_size=4, distance=ours_dist)


@pytest.mark.parametrize("name", ALL)
def test_ref_emb_labels_none_and_indices_tuple_as_pml(name):
    ours_loss, pml_loss = build_pair(name)
    emb_BD, labels_B = make_inputs(15)
    for loss in (ours_loss, pml_loss):
        with pytest.raises(ValueError, match="ref_emb"):
            loss(emb_BD, labels_B, ref_emb=emb_BD.clone(), ref_labels=labels_B)
    with pytest.raises(ValueError, match="needs labels"):
        ours_loss(emb_BD)
    if name != "P2SGradLoss":
        with pytest.raises(ValueError, match="labels are required"):
            pml_loss(emb_BD)
    # the batch passed as its own reference is no reference batch (PML accepts it too)
    compare(name, ours_loss, pml_loss, emb_BD, labels_B, self_reference=True)
    if name == "P2SGradLoss":
        tup = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
        for loss in (ours_loss, pml_loss):
            with pytest.raises(ValueError, match="indices_tuple"):
                loss(emb_BD, labels_B, tup)


@pytest.mark.parametrize("name", ALL)
def test_bad_labels_and_sizes(name):
    ours_loss, _ = build_pair(name)
    emb_BD, labels_B = make_inputs(16)
    with pytest.raises(ValueError, match="label 5 is outside \\[0, 5\\)"):
        ours_loss(emb_BD, torch.tensor([0, 1, 5, 2, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        ours_loss(emb_BD, torch.full_like(labels_B, -1))
    with pytest.raises(ValueError, match="integer class indices"):
        ours_loss(emb_BD, labels_B.double())
    with pytest.raises(ValueError, match="embedding_size=6"):
        ours_loss(emb_BD[:, :4], labels_B)


@pytest.mark.parametrize("name", WEIGHTED)
def test_get_logits(name):
    ours_loss, pml_loss = build_pair(name)
    emb_BD, labels_B = make_inputs(17)
    pml_loss(emb_BD, labels_B)  # PML casts W on a call; get_logits alone needs W in the embeddings' dtype
    assert_close(ours_loss.get_logits(emb_BD), pml_loss.get_logits(emb_BD), TOL, "get_logits")


@pytest.mark.parametrize("name", ["ArcFaceLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss", "SphereFaceLoss"])
def test_avg_angle_statistic(name):
    ours_loss, pml_loss = build_pair(name, collect_stats=True)
    emb_BD, labels_B = make_inputs(18)
    compare(name, ours_loss, pml_loss, emb_BD, labels_B)
    assert ours_loss.avg_angle == pytest.approx(pml_loss.avg_angle, abs=1e-9) and ours_loss.avg_angle > 0
    quiet, _ = build_pair(name, collect_stats=False)
    assert not hasattr(quiet, "avg_angle")


def test_recorded_settings_and_arcface_margin_in_degrees():
    ours_loss, pml_loss = build_pair("ArcFaceLoss", margin=20)
    assert ours_loss.margin == 20 and ours_loss.margin_radians == pytest.approx(pml_loss.margin, abs=1e-15)
    ours_loss, pml_loss = build_pair("SubCenterArcFaceLoss", sub_centers=2)
    assert ours_loss.W.shape == pml_loss.W.shape == (EMBEDDING_SIZE, 10)
    assert ours_loss.num_classes == pml_loss.num_classes == 5 and ours_loss.sub_centers == 2
    lms, pml_lms = build_pair("LargeMarginSoftmaxLoss", margin=3.0)
    assert lms.margin == pml_lms.margin == 3 and isinstance(lms.margin, int)
    for name in WEIGHTED:
        columns = 9 if name == "SubCenterArcFaceLoss" else 3  # three sub-centers per class by default
        assert getattr(ours, name)(num_classes=3, embedding_size=4).W.shape == (4, columns)
    assert ours.P2SGradLoss(4, 3).weight.shape == (4, 3)
    norm_C = torch.linalg.vector_norm(ours.P2SGradLoss(4, 3).weight, dim=0)
    assert torch.allclose(norm_C, torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("threshold", [75, 40, 10])
@pytest.mark.parametrize("sub_centers", [1, 3])
def test_subcenter_get_outliers(threshold, sub_centers):
    ours_loss, pml_loss = build_pair("SubCenterArcFaceLoss", num_classes=6, sub_centers=sub_centers)
    emb_BD, labels_B = make_inputs(19, batch_size=30, num_labels=4)  # classes 4, 5 absent
    pml_out, pml_dominant = pml_loss.get_outliers(emb_BD, labels_B, threshold=threshold)
    ours_out, ours_dominant = ours_loss.get_outliers(emb_BD, labels_B, threshold=threshold)
    assert ours_out.tolist() == pml_out.long().tolist() and ours_out.dtype == torch.long
    present = sorted(set(labels_B.tolist()))
    assert_close(ours_dominant[:, present], pml_dominant[:, present], 0.0, "dominant centers")
    assert torch.all(ours_dominant[:, [4, 5]] == 0)  # PML: uninitialised memory
    assert torch.equal(ours_loss.get_outliers(emb_BD, labels_B, threshold, return_dominant_centers=False), ours_out)


def test_two_calls_one_backward_and_float32_weights():
    """Two calls summed before one backward (P2SGrad renormalises its weights on every call), and float32 class
    weights with float64 embeddings: ours keep W in float32 (cast inside the graph), PML turns W.data to float64."""
    emb_BD, labels_B = make_inputs(20)
    for name in ALL:
        ours_loss, pml_loss = build_pair(name)
        grads = []
        for loss in (ours_loss, pml_loss):
            leaf_BD = emb_BD.clone().requires_grad_(True)
            (loss(leaf_BD, labels_B) + loss(leaf_BD * 3, labels_B.flip(0))).backward()
            grads.append((leaf_BD.grad, getattr(loss, weight_name(name)).grad))
        assert_close(grads[0][0], grads[1][0], TOL, f"{name} embeddings")
        assert_close(grads[0][1], grads[1][1], TOL, f"{name} weights")
        ours_loss, pml_loss = build_pair(name)
        ours_loss.float()
        pml_loss.float()
        leaf_BD = emb_BD.clone().requires_grad_(True)
        ours_value = ours_loss(leaf_BD, labels_B)
        ours_value.backward()
        weight = getattr(ours_loss, weight_name(name))
        assert weight.dtype == weight.grad.dtype == torch.float32 and ours_value.dtype == torch.float64
        pml_value = pml_loss(emb_BD, labels_B)
        assert getattr(pml_loss, weight_name(name)).dtype == torch.float64
        assert_close(ours_value, pml_value, TOL, f"{name} value with float32 weights")


def test_p2sgrad_warns_that_a_distance_has_no_effect():
    with pytest.warns(UserWarning, match="no effect"):
        ours.P2SGradLoss(4, 3, distance=ours_d.LpDistance())


BAD = [
    ("ArcFaceLoss", dict(margin=180), "margin"), ("ArcFaceLoss", dict(margin=-1), "margin"),
    ("ArcFaceLoss", dict(scale=0), "scale"), ("CosFaceLoss", dict(margin=float("nan")), "margin"),
    ("LargeMarginSoftmaxLoss", dict(margin=2.5), "margin"), ("LargeMarginSoftmaxLoss", dict(margin=0), "margin"),
    ("SphereFaceLoss", dict(scale=-1), "scale"), ("SubCenterArcFaceLoss", dict(sub_centers=0), "sub_centers"),
    ("NormalizedSoftmaxLoss", dict(temperature=0), "temperature"), ("ArcFaceLoss", dict(num_classes=0), "num_classes"),
    ("CosFaceLoss", dict(embedding_size=2.5), "embedding_size"),
    ("ArcFaceLoss", dict(weight_reg_weight="x"), "weight_reg_weight"),
    ("ArcFaceLoss", dict(weight_regularizer="LpRegularizer"), "weight_regularizer"),
    ("CosFaceLoss", dict(embedding_regularizer=3), "embedding_regularizer"),
    ("NormalizedSoftmaxLoss", dict(weight_init_func=1), "weight_init_func"),
]


@pytest.mark.parametrize("name, kwargs, argument", BAD, ids=[f"{n}-{a}" for n, _, a in BAD])
def test_bad_arguments_name_the_value(name, kwargs, argument):
    options = dict(num_classes=3, embedding_size=4) | kwargs
    with pytest.raises(ValueError, match=f"{name}: {argument}"):
        getattr(ours, name)(**options)
    with pytest.raises(ValueError, match="P2SGradLoss: descriptors_dim"):
        ours.P2SGradLoss(0, 3)


def test_margin_families_share_one_class_weight_base():
    from dmlscale.losses.class_weight_loss import ClassWeightLoss

    for name in WEIGHTED:
        assert issubclass(getattr(ours, name), ClassWeightLoss)
    for name in ANGULAR:
        assert issubclass(getattr(ours, name), ours.LargeMarginSoftmaxLoss)
    assert math.isclose(ours.ArcFaceLoss(num_classes=2, embedding_size=2).margin_radians, math.radians(28.6))


@pytest.mark.parametrize("name", ALL)
def test_cross_batch_memory_refuses_them_as_pml(name):
    ours_loss, pml_loss = build_pair(name)
    with pytest.raises(Exception, match=f"not supported for {name}"):
        pml_losses.CrossBatchMemory(pml_loss, EMBEDDING_SIZE, memory_size=10)
    with pytest.raises(ValueError, match=f"compares to references, got {name}"):
        ours.CrossBatchMemory(ours_loss, EMBEDDING_SIZE, memory_size=10)

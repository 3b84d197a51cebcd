"""ProxyAnchorLoss, ProxyNCALoss and SoftTripleLoss equal PML's (float64, 1e-10) in value and in the
gradients w.r.t. the embeddings and the learned proxies: PML's initial proxies are copied into ours, then
both run on the same batch. Every distance PML accepts, miner tuples, missing classes, a batch of one,
reducers; the same init under the same seed; refusals where PML refuses (as ValueErrors).

Legend: B batch, C classes, D embedding size.
"""

from __future__ import annotations

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from dmlscale.distributed import DistributedLoss
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, make_batch, make_distances, pair_tuple_from_labels,
    triplet_tuple_from_labels,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

PROXY_ATTR = {"ProxyAnchorLoss": "proxies", "ProxyNCALoss": "proxies", "SoftTripleLoss": "fc"}
NAMES = sorted(PROXY_ATTR)
DIM = 5


def make_pair(name: str, num_classes: int = 4, *, distance_setting=None, reducer: str | None = None, **kwargs):
    """(ours, PML) in float64, ours holding a copy of PML's initial proxies."""
    if distance_setting is not None:
        kwargs["distance"], pml_distance = make_distances(*distance_setting)
    pml_kwargs = dict(kwargs, distance=pml_distance) if distance_setting is not None else dict(kwargs)
    if reducer is not None:
        kwargs["reducer"], pml_kwargs["reducer"] = getattr(ours, reducer)(), getattr(pml_reducers, reducer)()
    theirs = getattr(pml_losses, name)(num_classes, DIM, **pml_kwargs).double()
    mine = getattr(ours, name)(num_classes, DIM, **kwargs).double()
    with torch.no_grad():
        getattr(mine, PROXY_ATTR[name]).copy_(getattr(theirs, PROXY_ATTR[name]))
    return mine, theirs


def run(loss, emb_BD, labels_B, indices_tuple=None):
    loss.zero_grad()
    leaf = emb_BD.detach().clone().requires_grad_(True)
    value = loss(leaf, labels_B, indices_tuple)
    value.backward()
    proxy_grad = getattr(loss, PROXY_ATTR[type(loss).__name__]).grad
    return value.detach(), leaf.grad, proxy_grad


def compare(mine, theirs, emb_BD, labels_B, indices_tuple=None, tol: float = 1e-10):
    """Value, gradient w.r.t. embeddings and w.r.t. the proxies; returns our value."""
    ours_value, ours_emb_grad, ours_proxy_grad = run(mine, emb_BD, labels_B, indices_tuple)
    pml_value, pml_emb_grad, pml_proxy_grad = run(theirs, emb_BD, labels_B, indices_tuple)
    assert torch.isfinite(ours_value)
    assert_close(ours_value, pml_value, tol, "loss value")
    assert_close(ours_emb_grad, pml_emb_grad, tol, "gradient w.r.t. embeddings")
    assert_close(ours_proxy_grad, pml_proxy_grad, tol, "gradient w.r.t. the proxies")
    return ours_value


def tuple_for(mode: str, labels_B, seed: int):
    if mode == "labels":
        return None
    return (pair_tuple_from_labels if mode == "pairs" else triplet_tuple_from_labels)(labels_B, seed)


def accepted(name: str, setting) -> bool:
    """SoftTripleLoss needs a similarity (PML asserts it); the other two take any distance."""
    return name != "SoftTripleLoss" or setting[0] in ("CosineSimilarity", "DotProductSimilarity")


CASES = [(name, setting) for name in NAMES for setting in DISTANCE_SETTINGS if accepted(name, setting)]
CASE_IDS = [f"{name}-{DISTANCE_IDS[DISTANCE_SETTINGS.index(setting)]}" for name, setting in CASES]


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("name, setting", CASES, ids=CASE_IDS)
def test_parity_every_accepted_distance(name, setting, mode):
    torch.manual_seed(11)
    mine, theirs = make_pair(name, distance_setting=setting, **({"centers_per_class": 3}
                                                                  if name == "SoftTripleLoss" else {}))
    emb_BD, labels_B = make_batch(41, batch_size=12, dim=DIM, num_classes=4)
    value = compare(mine, theirs, emb_BD, labels_B, tuple_for(mode, labels_B, 41))
    assert value > 1e-3


@pytest.mark.parametrize("setting", [s for s in DISTANCE_SETTINGS if not accepted("SoftTripleLoss", s)],
                         ids=[i for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if not accepted("SoftTripleLoss", s)])
def test_soft_triple_refuses_a_distance_as_pml_does(setting):
    ours_dist, pml_dist = make_distances(*setting)
    with pytest.raises(AssertionError):
        pml_losses.SoftTripleLoss(3, DIM, distance=pml_dist)
    with pytest.raises(ValueError, match=f"SoftTripleLoss needs a similarity .*got the distance {setting[0]}"):
        ours.SoftTripleLoss(3, DIM, distance=ours_dist)


@pytest.mark.parametrize("kwargs", [
    ("ProxyAnchorLoss", dict()), ("ProxyAnchorLoss", dict(margin=0.3, alpha=8)),
    ("ProxyAnchorLoss", dict(margin=-0.1, alpha=64)),
    ("ProxyNCALoss", dict()), ("ProxyNCALoss", dict(softmax_scale=4)), ("ProxyNCALoss", dict(softmax_scale=0.3)),
    ("SoftTripleLoss", dict()), ("SoftTripleLoss", dict(centers_per_class=1)),
    ("SoftTripleLoss", dict(centers_per_class=4, la=5, gamma=0.5, margin=0.2)),
], ids=lambda case: f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items()))
@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
def test_parity_settings(kwargs, mode):
    name, options = kwargs
    torch.manual_seed(12)
    mine, theirs = make_pair(name, num_classes=5, **options)
    emb_BD, labels_B = make_batch(42, batch_size=15, dim=DIM, num_classes=5)
    compare(mine, theirs, emb_BD, labels_B, tuple_for(mode, labels_B, 42))


@pytest.mark.parametrize("name", NAMES)
def test_parity_with_classes_missing_from_the_batch(name):
    """Seven proxies, the batch holds classes 0, 2 and 5 only (ProxyAnchor: |P+| = 3 of 7)."""
    torch.manual_seed(13)
    mine, theirs = make_pair(name, num_classes=7)
    emb_BD, _ = make_batch(43, batch_size=9, dim=DIM)
    labels_B = torch.tensor([0, 2, 5, 5, 0, 2, 2, 5, 0])
    for mode in ("labels", "pairs", "triplets"):
        compare(mine, theirs, emb_BD, labels_B, tuple_for(mode, labels_B, 43))
    if name == "ProxyAnchorLoss":
        assert mine.reducer.reducers["pos_loss"].divisor == 3 and mine.reducer.reducers["neg_loss"].divisor == 7


@pytest.mark.parametrize("name", NAMES)
def test_parity_batch_of_one_and_of_one_class(name):
    torch.manual_seed(14)
    mine, theirs = make_pair(name, num_classes=3)
    emb_BD, _ = make_batch(44, batch_size=6, dim=DIM)
    compare(mine, theirs, emb_BD[:1], torch.tensor([2]))
    compare(mine, theirs, emb_BD, torch.full((6,), 1))


@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_reducers(name, reducer):
    torch.manual_seed(15)
    mine, theirs = make_pair(name, reducer=reducer)
    emb_BD, labels_B = make_batch(45, batch_size=10, dim=DIM, num_classes=3)
    compare(mine, theirs, emb_BD, labels_B)
    compare(mine, theirs, emb_BD, labels_B, triplet_tuple_from_labels(labels_B, 45))


@pytest.mark.parametrize("name", NAMES)
def test_same_initial_proxies_as_pml_under_the_same_seed(name):
    torch.manual_seed(16)
    theirs = getattr(pml_losses, name)(6, 8)
    torch.manual_seed(16)
    mine = getattr(ours, name)(6, 8)
    assert torch.equal(getattr(mine, PROXY_ATTR[name]).data, getattr(theirs, PROXY_ATTR[name]).data)
    assert getattr(mine, PROXY_ATTR[name]).shape == getattr(theirs, PROXY_ATTR[name]).shape
    assert mine.sub_loss_names() == theirs.sub_loss_names()
    assert type(mine.reducer).__name__ == type(theirs.reducer).__name__
    assert type(mine.distance).__name__ == type(theirs.distance).__name__
    assert sorted(mine.state_dict()) == sorted(theirs.state_dict())
    # weight_init_func fills the proxies in place, as PML's
    mine = getattr(ours, name)(6, 8, weight_init_func=lambda w: torch.nn.init.constant_(w, 0.5))
    assert torch.all(getattr(mine, PROXY_ATTR[name]) == 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_float32_proxies_keep_their_dtype_and_get_float64_gradients_right(name):
    """PML converts its proxies to the embeddings' dtype in place; ours cast inside the graph (same numbers),
    so the parameter stays float32 and its gradient is PML's rounded to float32."""
    torch.manual_seed(17)
    theirs = getattr(pml_losses, name)(4, DIM)
    mine = getattr(ours, name)(4, DIM)
    with torch.no_grad():
        getattr(mine, PROXY_ATTR[name]).copy_(getattr(theirs, PROXY_ATTR[name]))
    emb_BD, labels_B = make_batch(46, batch_size=8, dim=DIM, num_classes=4)
    ours_value, ours_emb_grad, ours_proxy_grad = run(mine, emb_BD, labels_B)
    pml_value, pml_emb_grad, pml_proxy_grad = run(theirs, emb_BD, labels_B)
    assert getattr(mine, PROXY_ATTR[name]).dtype == torch.float32 and ours_proxy_grad.dtype == torch.float32
    assert getattr(theirs, PROXY_ATTR[name]).dtype == torch.float64  # PML's in-place conversion
    assert_close(ours_value, pml_value)
    assert_close(ours_emb_grad, pml_emb_grad)
    assert_close(ours_proxy_grad, pml_proxy_grad.float(), tol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_ref_emb_is_refused_as_pml_does(name):
    emb_BD, labels_B = make_batch(47, batch_size=6, dim=DIM)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        getattr(pml_losses, name)(3, DIM)(emb_BD, labels_B, ref_emb=emb_BD.clone(), ref_labels=labels_B)
    with pytest.raises(ValueError, match=f"{name} compares embeddings with its learned proxies; ref_emb is not"):
        getattr(ours, name)(3, DIM).double()(emb_BD, labels_B, ref_emb=emb_BD.clone(), ref_labels=labels_B)


@pytest.mark.parametrize("name", NAMES)
def test_errors_name_the_bad_values(name):
    loss = getattr(ours, name)(4, DIM).double()
    emb_BD = torch.randn(3, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"{name}: label 4 is outside \[0, 4\)"):
        loss(emb_BD, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 4\)"):
        loss(emb_BD, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        loss(emb_BD, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=f"{name} needs labels"):
        loss(emb_BD)
    with pytest.raises(ValueError, match="embeddings have size 6, the proxies were built for embedding_size=5"):
        loss(torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        getattr(ours, name)(0, DIM)
    with pytest.raises(ValueError, match="embedding_size must be a positive int, got 2.5"):
        getattr(ours, name)(3, 2.5)
    with pytest.raises(ValueError, match="weight_init_func must be a callable"):
        getattr(ours, name)(3, DIM, weight_init_func="normal")


def test_setting_errors():
    with pytest.raises(ValueError, match="ProxyAnchorLoss: alpha must be a finite real number, got 'x'"):
        ours.ProxyAnchorLoss(3, DIM, alpha="x")
    with pytest.raises(ValueError, match="ProxyNCALoss: softmax_scale must be a positive number, got 0"):
        ours.ProxyNCALoss(3, DIM, softmax_scale=0)
    with pytest.raises(ValueError, match="SoftTripleLoss: gamma must be a positive number, got 0"):
        ours.SoftTripleLoss(3, DIM, gamma=0)
    with pytest.raises(ValueError, match="SoftTripleLoss: centers_per_class must be a positive int, got 0"):
        ours.SoftTripleLoss(3, DIM, centers_per_class=0)
    assert ours.SoftTripleLoss(3, DIM, gamma=0.25).gamma == 4  # PML keeps 1 / gamma


@pytest.mark.parametrize("name", ["ProxyNCALoss", "SoftTripleLoss"])
def test_per_sample_proxy_losses_run_under_distributed_loss(name):
    """One process: DistributedLoss gives the plain value and gradients (the terms are per sample)."""
    torch.manual_seed(18)
    loss = getattr(ours, name)(4, DIM).double()
    emb_BD, labels_B = make_batch(48, batch_size=8, dim=DIM, num_classes=4)
    plain = run(loss, emb_BD, labels_B)
    wrapped = DistributedLoss(loss)
    leaf = emb_BD.clone().requires_grad_(True)
    loss.zero_grad()
    value = wrapped(leaf, labels_B)
    value.backward()
    assert_close(value.detach(), plain[0])
    assert_close(leaf.grad, plain[1])
    assert_close(getattr(loss, PROXY_ATTR[name]).grad, plain[2])


def test_proxy_anchor_under_distributed_loss_runs_on_one_process_only():
    """Each proxy pools the whole batch: on one process DistributedLoss gives the plain value (its DivisorReducer
    included); with more, the other ranks' rows arrive as ref_emb, which it refuses by name (the multi-process
    case is in tests/distributed/test_global_proxy_losses.py)."""
    emb_BD, labels_B = make_batch(49, batch_size=8, dim=DIM, num_classes=4)
    loss = ours.ProxyAnchorLoss(4, DIM).double()
    assert_close(DistributedLoss(loss)(emb_BD, labels_B), loss(emb_BD, labels_B))
    with pytest.raises(ValueError, match="ProxyAnchorLoss compares .* ref_emb is not supported .* pool the whole"):
        ours.ProxyAnchorLoss(4, DIM, reducer=ours.MeanReducer()).double()(emb_BD[:4], labels_B[:4], ref_emb=emb_BD,
                                                                          ref_labels=labels_B)


@pytest.mark.parametrize("name", NAMES)
def test_training_the_proxies_lowers_the_loss(name):
    torch.manual_seed(19)
    loss = getattr(ours, name)(3, DIM).double()
    emb_BD, labels_B = make_batch(50, batch_size=12, dim=DIM, num_classes=3)
    emb_BD = emb_BD + 3 * torch.nn.functional.one_hot(labels_B, DIM).double()
    optimiser = torch.optim.SGD(loss.parameters(), lr=0.5)
    values = []
    for _ in range(15):
        optimiser.zero_grad()
        value = loss(emb_BD, labels_B)
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert values[-1] < 0.8 * values[0], values


def test_proxy_nca_is_an_nca_loss_as_in_pml():
    assert isinstance(ours.ProxyNCALoss(3, DIM), ours.NCALoss)
    assert issubclass(pml_losses.ProxyNCALoss, pml_losses.NCALoss)
    assert ours.ProxyNCALoss(3, DIM, distance=ours_d.CosineSimilarity()).distance.is_inverted


@pytest.mark.parametrize("regularizer", ["LpRegularizer", "RegularFaceRegularizer", "ZeroMeanRegularizer"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_with_a_weight_regularizer(name, regularizer):
    """PML's weight regularizer (any module of the proxies' rows to a scalar; PML's own here): the sub-loss
    "weight_reg_loss" times weight_reg_weight, reduced with the rest."""
    pml_regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    reg = getattr(pml_regularizers, regularizer)()
    torch.manual_seed(20)
    mine, theirs = make_pair(name, weight_regularizer=reg, weight_reg_weight=0.3)
    assert mine.sub_loss_names() == theirs.sub_loss_names() and "weight_reg_loss" in mine.sub_loss_names()
    emb_BD, labels_B = make_batch(51, batch_size=10, dim=DIM, num_classes=4)
    compare(mine, theirs, emb_BD, labels_B)
    compare(mine, theirs, emb_BD, labels_B, triplet_tuple_from_labels(labels_B, 51))
    plain, _ = make_pair(name)
    with torch.no_grad():
        getattr(plain, PROXY_ATTR[name]).copy_(getattr(mine, PROXY_ATTR[name]))
    rows = getattr(mine, PROXY_ATTR[name]).detach()
    expected = plain(emb_BD, labels_B) + 0.3 * reg(rows if name != "SoftTripleLoss" else rows.t())
    assert_close(mine(emb_BD, labels_B).detach(), expected.detach())
    with pytest.raises(ValueError, match=f"{name}: weight_regularizer must be None or a regularizer module"):
        getattr(ours, name)(3, DIM, weight_regularizer="lp")
    with pytest.raises(ValueError, match=f"{name}: weight_reg_weight must be a number, got 'x'"):
        getattr(ours, name)(3, DIM, weight_regularizer=reg, weight_reg_weight="x")

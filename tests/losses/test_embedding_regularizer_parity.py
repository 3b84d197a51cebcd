"""PML's `embedding_regularizer=` / `embedding_reg_weight=` on every loss (BaseMetricLossFunction's
EmbeddingRegularizerMixin): value and gradients equal PML's for a pair, a triplet, an NTXent, a class-weight and
a proxy loss (materialised and streamed paths, ref_emb: the query rows only are regularized), the same
sub-loss names and loss-dict keys, and every loss adds weight * regularizer(embeddings) as `embedding_reg_loss`.

Legend: B queries, R references, D embedding size.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import dmlscale.losses as ours
import dmlscale.regularizers as ours_r
from dmlscale.losses.base import BaseMetricLossFunction
from tests.parity import assert_close, compare_losses, make_batch, pair_tuple_from_labels

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_r = pytest.importorskip("pytorch_metric_learning.regularizers")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

DIM, NUM_CLASSES = 5, 3


def regularizer_pair(name: str, **kwargs):
    return getattr(ours_r, name)(**kwargs), getattr(pml_r, name)(**kwargs)


# (loss, constructor options, options for ours only): one of each family
CASES = {
    "contrastive": ("ContrastiveLoss", dict(pos_margin=0.1, neg_margin=0.8), dict(tiled=False)),
    "contrastive-streamed": ("ContrastiveLoss", dict(pos_margin=0.1, neg_margin=0.8), dict(tiled=True, tile_size=4)),
    "triplet": ("TripletMarginLoss", dict(margin=0.3), dict(tiled=False)),
    "triplet-streamed": ("TripletMarginLoss", dict(margin=0.3), dict(tiled=True, tile_size=4)),
    "ntxent": ("NTXentLoss", dict(temperature=0.2), dict(tiled=False)),
    "ntxent-streamed": ("NTXentLoss", dict(temperature=0.2), dict(tiled=True, tile_size=4)),
    "cosface": ("CosFaceLoss", dict(num_classes=NUM_CLASSES, embedding_size=DIM, scale=8), {}),
    "proxy-anchor": ("ProxyAnchorLoss", dict(num_classes=NUM_CLASSES, embedding_size=DIM), {}),
}
LEARNED = {"CosFaceLoss": "W", "ProxyAnchorLoss": "proxies"}


def build(case: str, regularizer: tuple, weight: float, **extra):
    name, options, ours_only = CASES[case]
    mine = getattr(ours, name)(**options, **ours_only, embedding_regularizer=regularizer[0],
                               embedding_reg_weight=weight, **{k: v[0] for k, v in extra.items()})
    theirs = getattr(pml_losses, name)(**options, embedding_regularizer=regularizer[1], embedding_reg_weight=weight,
                                       **{k: v[1] for k, v in extra.items()})
    mine.double(), theirs.double()
    if name in LEARNED:
        getattr(mine, LEARNED[name]).data.copy_(getattr(theirs, LEARNED[name]).data)
    return mine, theirs


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("regularizer", ["LpRegularizer", "ZeroMeanRegularizer"])
def test_parity_value_and_gradients(case, regularizer):
    mine, theirs = build(case, regularizer_pair(regularizer), 0.7)
    assert mine.sub_loss_names() == theirs.sub_loss_names() and mine.sub_loss_names()[-1] == "embedding_reg_loss"
    emb_BD, labels_B = make_batch(3, batch_size=12, dim=DIM, num_classes=NUM_CLASSES, scale=1.5)
    value = compare_losses(mine, theirs, emb_BD, labels_B)
    without, _ = build(case, (None, None), 1)
    # the term is there: the value without a regularizer differs by weight * regularizer(embeddings)
    expected_term = 0.7 * regularizer_pair(regularizer)[1](emb_BD)
    assert abs(float(expected_term)) > 1e-3
    if CASES[case][0] in LEARNED:
        getattr(without, LEARNED[CASES[case][0]]).data.copy_(getattr(mine, LEARNED[CASES[case][0]]).data)
    assert_close(value - without.double()(emb_BD, labels_B), expected_term, what="regularization term")


@pytest.mark.parametrize("case", ["contrastive", "triplet-streamed", "ntxent"])
def test_parity_with_ref_emb_and_a_pair_tuple(case):
    """ref_emb is not regularized (PML applies the regularizer to the query embeddings only)."""
    mine, theirs = build(case, regularizer_pair("LpRegularizer", p=1, power=2), 0.4)
    emb_BD, labels_B = make_batch(4, batch_size=9, dim=DIM, num_classes=NUM_CLASSES)
    ref_RD, ref_labels_R = make_batch(5, batch_size=11, dim=DIM, num_classes=NUM_CLASSES)
    compare_losses(mine, theirs, emb_BD, labels_B, ref_emb=ref_RD, ref_labels=ref_labels_R)
    if case != "triplet-streamed":
        compare_losses(mine, theirs, emb_BD, labels_B, indices_tuple=pair_tuple_from_labels(labels_B, 4))


def test_weight_and_embedding_regularizers_in_pmls_order_with_per_name_reducers():
    """ProxyAnchor: weight_reg_loss before embedding_reg_loss; DoNothingReducer dicts have PML's keys and terms."""
    extra = dict(weight_regularizer=regularizer_pair("LpRegularizer"),
                 reducer=(ours.DoNothingReducer(), pml_reducers.DoNothingReducer()))
    mine, theirs = build("proxy-anchor", regularizer_pair("ZeroMeanRegularizer"), 2.0, **extra)
    assert mine.sub_loss_names() == theirs.sub_loss_names() == ["pos_loss", "neg_loss", "weight_reg_loss",
                                                                "embedding_reg_loss"]
    emb_BD, labels_B = make_batch(6, batch_size=10, dim=DIM, num_classes=NUM_CLASSES)
    mine_dict, pml_dict = mine(emb_BD, labels_B), theirs(emb_BD, labels_B)
    assert list(mine_dict) == list(pml_dict)
    for key in ("weight_reg_loss", "embedding_reg_loss"):
        assert mine_dict[key]["reduction_type"] == pml_dict[key]["reduction_type"] == "already_reduced"
        assert_close(mine_dict[key]["losses"], pml_dict[key]["losses"], what=key)


REQUIRED = dict(num_classes=NUM_CLASSES, embedding_size=DIM, descriptors_dim=DIM, l=DIM, margin=0.4, Tn=1.0)
EVERY_LOSS = sorted(name for name in ours.__all__ if inspect.isclass(getattr(ours, name))
                    and issubclass(getattr(ours, name), BaseMetricLossFunction)
                    and name not in ("BaseMetricLossFunction", "GenericPairLoss", "VICRegLoss"))


@pytest.mark.parametrize("name", EVERY_LOSS)
def test_every_loss_takes_the_regularizer(name):
    """weight * regularizer(embeddings) under `embedding_reg_loss`, listed last as PML lists it."""
    cls = getattr(ours, name)
    required = {k: v for k, v in REQUIRED.items()
                if k in inspect.signature(cls).parameters and inspect.signature(cls).parameters[k].default is
                inspect.Parameter.empty}
    extra = dict(K=NUM_CLASSES) if name == "ManifoldLoss" else {}
    loss = cls(**required, **extra, embedding_regularizer=ours_r.LpRegularizer(), embedding_reg_weight=0.25).double()
    assert loss.sub_loss_names()[-1] == "embedding_reg_loss"
    # PML lists SmoothAP as ["loss"] but returns "ap_loss", and TCM as one "loss" (ours: pos_loss, neg_loss)
    if hasattr(pml_losses, name) and name not in ("SmoothAPLoss", "ThresholdConsistentMarginLoss"):
        theirs = getattr(pml_losses, name)(**required, embedding_regularizer=pml_r.LpRegularizer())
        assert loss.sub_loss_names() == theirs.sub_loss_names()
    emb_BD, labels_B = make_batch(7, batch_size=12, dim=DIM, num_classes=NUM_CLASSES)
    loss_dict = loss.loss_dict(emb_BD, None if name == "ManifoldLoss" else labels_B)
    expected = 0.25 * emb_BD.norm(dim=1).mean()  # LpRegularizer's default: mean L2 norm of the rows
    assert_close(loss_dict["embedding_reg_loss"]["losses"], expected, what=f"{name} embedding_reg_loss")


@pytest.mark.parametrize("bad, named", [(dict(embedding_regularizer=3), "embedding_regularizer"),
                                        (dict(embedding_reg_weight="x"), "embedding_reg_weight")])
def test_bad_options_are_named(bad, named):
    with pytest.raises(ValueError, match=named):
        ours.TripletMarginLoss(**bad)
    with pytest.raises(ValueError, match="VICRegLoss takes no embedding_regularizer"):
        ours.VICRegLoss(embedding_regularizer=ours_r.LpRegularizer())

"""FastAPLoss and RankedListLoss equal PML's in value and gradient (float64, 1e-10) for every distance
each accepts, from labels (and FastAP's tuple weights); both refuse a plain ref_emb in PML, ours
computes it, checked by a block of queries against the whole batch (what DistributedLoss does)."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, compare_losses, make_batch, make_distances, run_mode,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")


def fast_ap_accepts(setting) -> bool:
    name, kwargs = setting
    return name == "LpDistance" and kwargs.get("p", 2) == 2 and kwargs.get("normalize_embeddings", True)


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_fast_ap_every_distance(setting, mode):
    if not fast_ap_accepts(setting):
        with pytest.raises(ValueError, match="FastAPLoss requires"):
            ours.FastAPLoss(distance=getattr(ours_d, setting[0])(**setting[1]))
        with pytest.raises(AssertionError):
            pml_losses.FastAPLoss(distance=getattr(pml_d, setting[0])(**setting[1]))
        return
    ours_dist, pml_dist = make_distances(*setting)
    for num_bins in (10, 4, 25):
        value = run_mode(mode, ours.FastAPLoss(num_bins=num_bins, distance=ours_dist),
                         pml_losses.FastAPLoss(num_bins=num_bins, distance=pml_dist), seed=91)
        assert value > 1e-3


def test_fast_ap_defaults_and_sum():
    for mode in ("labels", "pairs"):
        run_mode(mode, ours.FastAPLoss(), pml_losses.FastAPLoss(), seed=92)
        run_mode(mode, ours.FastAPLoss(reducer=ours.SumReducer()),
                 pml_losses.FastAPLoss(reducer=pml_reducers.SumReducer()), seed=92)


RLL_SETTINGS = [dict(margin=0.4, Tn=4), dict(margin=0.6, Tn=3, Tp=2, imbalance=0.3), dict(margin=0.2, Tn=1, alpha=1.1)]


@pytest.mark.parametrize("kwargs", RLL_SETTINGS)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_ranked_list_every_distance(setting, kwargs):
    ours_dist, pml_dist = make_distances(*setting)
    run_mode("labels", ours.RankedListLoss(distance=ours_dist, **kwargs),
             pml_losses.RankedListLoss(distance=pml_dist, **kwargs), seed=93)


@pytest.mark.parametrize("kwargs", RLL_SETTINGS)
def test_ranked_list_default_distance(kwargs):
    value = run_mode("labels", ours.RankedListLoss(**kwargs), pml_losses.RankedListLoss(**kwargs), seed=94)
    assert value > 1e-3
    run_mode("labels", ours.RankedListLoss(reducer=ours.SumReducer(), **kwargs),
             pml_losses.RankedListLoss(reducer=pml_reducers.SumReducer(), **kwargs), seed=94)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
@pytest.mark.parametrize("name, kwargs", [("FastAPLoss", {}), ("RankedListLoss", dict(margin=0.4, Tn=4))])
def test_no_positives_or_no_negatives(name, kwargs, labels):
    emb, _ = make_batch(95, batch_size=8)
    compare_losses(getattr(ours, name)(**kwargs), getattr(pml_losses, name)(**kwargs), emb, labels)


@pytest.mark.parametrize("name, kwargs", [("FastAPLoss", {}), ("RankedListLoss", dict(margin=0.4, Tn=4))])
def test_ref_emb_block_equals_its_share(name, kwargs):
    emb, labels = make_batch(96, batch_size=14)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        getattr(pml_losses, name)(**kwargs)(emb, labels, ref_emb=emb.clone(), ref_labels=labels)
    whole = getattr(ours, name)(reducer=ours.DoNothingReducer(), **kwargs)(emb, labels)["loss"]
    in_block = (whole["indices"] >= 3) & (whole["indices"] < 10)
    got = getattr(ours, name)(reducer=ours.SumReducer(), **kwargs)(
        emb[3:10], labels[3:10], ref_emb=emb, ref_labels=labels, query_ref_index=torch.arange(3, 10))
    assert_close(got, whole["losses"][in_block].sum())


def test_ranked_list_refuses_tuples_like_pml():
    emb, labels = make_batch(97)
    tup = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="indices_tuple"):
        ours.RankedListLoss(margin=0.4, Tn=4)(emb, labels, tup)


@pytest.mark.parametrize("kwargs, shown", [(dict(margin=0.4, Tn=4, imbalance=1.5), "1.5"),
                                           (dict(margin="a", Tn=10), "'a'"), (dict(margin=0.4, Tn=None), "None")])
def test_ranked_list_bad_settings(kwargs, shown):
    with pytest.raises(ValueError, match=f"must be .*{shown}"):
        ours.RankedListLoss(**kwargs)


def test_fast_ap_bad_bins():
    with pytest.raises(ValueError, match="num_bins must be a positive int, got 0"):
        ours.FastAPLoss(num_bins=0)

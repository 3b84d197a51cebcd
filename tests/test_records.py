"""collect_stats follows PML: None (the default) reads the process-wide switch dmlscale.records.COLLECT_STATS,
and a module built with statistics off has exactly the statistic attributes PML's has (usually none)."""

import inspect

import pytest
import torch

pml_c_f = pytest.importorskip("pytorch_metric_learning.utils.common_functions")
import pytorch_metric_learning.distances as pml_distances  # noqa: E402
import pytorch_metric_learning.losses as pml_losses  # noqa: E402
import pytorch_metric_learning.miners as pml_miners  # noqa: E402
import pytorch_metric_learning.reducers as pml_reducers  # noqa: E402

from dmlscale import components, distances, losses, miners, records  # noqa: E402
from tests.parity import make_batch  # noqa: E402

KINDS = {"loss": (losses, pml_losses), "miner": (miners, pml_miners), "reducer": (losses, pml_reducers),
         "distance": (distances, pml_distances)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_collect_stats_defaults_to_none_like_pml(kind):
    """Every component that takes collect_stats defaults it to None, as PML's classes do."""
    checked = 0
    for name, cls in components.component_classes(kind).items():
        option = components.accepted_options(cls).get("collect_stats")
        if option is None:
            continue
        assert option.default is None, f"{name}: collect_stats defaults to {option.default!r}, PML's to None"
        checked += 1
    assert checked > 0


def stat_modules(collect_stats):
    """(ours, PML's, call) for one module of each kind that records statistics."""
    emb_BD, labels_B = make_batch(0, batch_size=12, dim=5, num_classes=3)
    ref_RD, ref_labels_R = make_batch(1, batch_size=9, dim=5, num_classes=3)
    kw = {} if collect_stats == "default" else {"collect_stats": collect_stats}
    loss_dict = {"loss": {"losses": torch.rand(6, dtype=torch.float64) - 0.3, "indices": torch.arange(6),
                          "reduction_type": "element", "divisor": 4}}
    yield ours_and_pml("LpDistance", distances, pml_distances, kw), lambda d: d(emb_BD, ref_RD)
    for name in ("TripletMarginMiner", "PairMarginMiner", "BatchEasyHardMiner", "MultiSimilarityMiner", "AngularMiner",
                 "HDCMiner", "UniformHistogramMiner", "BatchHardMiner", "DistanceWeightedMiner"):
        yield ours_and_pml(name, miners, pml_miners, kw), lambda m: m(emb_BD, labels_B, ref_RD, ref_labels_R)
    for name in ("ThresholdReducer", "AvgNonZeroReducer", "MeanReducer", "DivisorReducer"):
        extra = {"low": 0.1} if name == "ThresholdReducer" else {}
        yield ours_and_pml(name, losses, pml_reducers, {**kw, **extra}), lambda r: r(loss_dict, emb_BD, labels_B)
    for name in ("TripletMarginLoss", "ContrastiveLoss", "NTXentLoss"):
        yield ours_and_pml(name, losses, pml_losses, kw), lambda f: f(emb_BD, labels_B)


def ours_and_pml(name, ours_module, pml_module, kwargs):
    return getattr(ours_module, name)(**kwargs), getattr(pml_module, name)(**kwargs)


def recorded_stat_names(pml_module_obj):
    """The statistics PML's class records (its list with statistics on)."""
    kwargs = {"low": 0.1} if type(pml_module_obj).__name__ == "ThresholdReducer" else {}
    return list(getattr(type(pml_module_obj)(collect_stats=True, **kwargs), "_record_these_stats", []))


@pytest.mark.parametrize("switch", [False, True])
@pytest.mark.parametrize("collect_stats", [False, True, "default"])
def test_statistic_attributes_exist_exactly_when_pml_has_them(collect_stats, switch, monkeypatch):
    """The global switch is read at construction (monkeypatched for both libraries); afterwards each statistic
    attribute exists on ours exactly when it exists on PML's, before and after a call."""
    monkeypatch.setattr(records, "COLLECT_STATS", switch)
    monkeypatch.setattr(pml_c_f, "COLLECT_STATS", switch)
    expected_on = switch if collect_stats == "default" else collect_stats
    for (ours_obj, pml_obj), call in stat_modules(collect_stats):
        name = type(ours_obj).__name__
        assert ours_obj.collect_stats is pml_obj.collect_stats is expected_on, name
        names = recorded_stat_names(pml_obj)
        for when in ("built", "called"):
            if when == "called":
                torch.manual_seed(0)
                call(ours_obj)
                torch.manual_seed(0)
                call(pml_obj)
            ours_has = {n for n in names if hasattr(ours_obj, n)}
            pml_has = {n for n in names if hasattr(pml_obj, n)}
            assert ours_has == pml_has, f"{name} ({when}): ours has {sorted(ours_has)}, PML {sorted(pml_has)}"
        if expected_on:
            assert set(names) <= set(dir(ours_obj)), name


def test_collect_stats_rejects_non_bools():
    with pytest.raises(ValueError, match="collect_stats.*'yes'"):
        losses.MeanReducer(collect_stats="yes")


def test_the_switch_is_read_when_a_module_is_built(monkeypatch):
    monkeypatch.setattr(records, "COLLECT_STATS", True)
    on = miners.TripletMarginMiner()
    monkeypatch.setattr(records, "COLLECT_STATS", False)
    off = miners.TripletMarginMiner()
    assert on.collect_stats and not off.collect_stats
    assert inspect.signature(records.ModuleWithRecords).parameters["collect_stats"].default is None

"""TupletMarginLoss and SignalToNoiseRatioContrastiveLoss equal PML's in value and gradient
(float64, 1e-10) from labels, pair and triplet tuples and ref_emb, with the no-positive /
no-negative cases; the distances each refuses raise a ValueError naming them, as PML refuses them."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, compare_losses, make_batch, run_mode

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

REQUIRED = {"TupletMarginLoss": "CosineSimilarity", "SignalToNoiseRatioContrastiveLoss": "SNRDistance"}


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("kwargs", [dict(), dict(margin=10.0, scale=16), dict(margin=2.0, scale=4)])
def test_tuplet_parity(kwargs, mode):
    value = run_mode(mode, ours.TupletMarginLoss(**kwargs), pml_losses.TupletMarginLoss(**kwargs), seed=71)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("kwargs", [dict(), dict(pos_margin=0.3, neg_margin=1.5), dict(pos_margin=0.1, neg_margin=0.9)])
def test_snr_parity(kwargs, mode):
    value = run_mode(mode, ours.SignalToNoiseRatioContrastiveLoss(**kwargs),
                     pml_losses.SignalToNoiseRatioContrastiveLoss(**kwargs), seed=72)
    assert value > 1e-3


def test_snr_streamed_path_equals_pml():
    emb, labels = make_batch(73, batch_size=20)
    compare_losses(ours.SignalToNoiseRatioContrastiveLoss(tiled=True, tile_size=7),
                   pml_losses.SignalToNoiseRatioContrastiveLoss(), emb, labels)


@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer"])
@pytest.mark.parametrize("name", list(REQUIRED))
def test_reducers(name, reducer):
    for mode in ("labels", "pairs"):
        run_mode(mode, getattr(ours, name)(reducer=getattr(ours, reducer)()),
                 getattr(pml_losses, name)(reducer=getattr(pml_reducers, reducer)()), seed=74)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
@pytest.mark.parametrize("name", list(REQUIRED))
def test_no_positives_or_no_negatives(name, labels):
    emb, _ = make_batch(75, batch_size=8)
    value = compare_losses(getattr(ours, name)(), getattr(pml_losses, name)(), emb, labels)
    if name == "TupletMarginLoss":
        assert value == 0


@pytest.mark.parametrize("name", list(REQUIRED))
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_other_distances_raise(name, setting):
    if setting[0] == REQUIRED[name]:
        pytest.skip("the distance this loss requires")
    with pytest.raises(ValueError, match=f"{name} requires distance {REQUIRED[name]}, got {setting[0]}"):
        getattr(ours, name)(distance=getattr(ours_d, setting[0])(**setting[1]))
    with pytest.raises(AssertionError):
        getattr(pml_losses, name)(distance=getattr(pml_d, setting[0])(**setting[1]))


@pytest.mark.parametrize("kwargs, shown", [(dict(scale=0), "0"), (dict(margin="5"), "'5'")])
def test_tuplet_bad_settings(kwargs, shown):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be .*{shown}"):
        ours.TupletMarginLoss(**kwargs)

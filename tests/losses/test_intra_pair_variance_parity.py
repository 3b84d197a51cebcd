"""IntraPairVarianceLoss equals PML's in value and gradient (float64, 1e-10) for every distance, from
labels, pair and triplet tuples and ref_emb, with no-positive / no-negative cases; DistributedLoss
refuses it on more than one process (its means are over the whole batch's pairs)."""

import pytest
import torch

import dmlscale.losses as ours
from dmlscale.distributed import DistributedLoss
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, compare_losses, make_batch, make_distances, run_mode

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_parity_every_distance(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    kwargs = dict(pos_eps=0.05, neg_eps=0.02)
    value = run_mode(mode, ours.IntraPairVarianceLoss(distance=ours_dist, **kwargs),
                     pml_losses.IntraPairVarianceLoss(distance=pml_dist, **kwargs), seed=81)
    assert value > 1e-6


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
def test_defaults_and_reducers(reducer, mode):
    run_mode(mode, ours.IntraPairVarianceLoss(reducer=getattr(ours, reducer)()),
             pml_losses.IntraPairVarianceLoss(reducer=getattr(pml_reducers, reducer)()), seed=82)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
def test_no_positives_or_no_negatives(labels):
    emb, _ = make_batch(83, batch_size=8)
    compare_losses(ours.IntraPairVarianceLoss(), pml_losses.IntraPairVarianceLoss(), emb, labels)


def test_distributed_loss_on_one_process_is_the_plain_loss():
    """One process: DistributedLoss is the plain loss (W > 1 is refused, see tests/distributed)."""
    emb, labels = make_batch(84)
    compare_losses(DistributedLoss(ours.IntraPairVarianceLoss()), ours.IntraPairVarianceLoss(), emb, labels)


@pytest.mark.parametrize("kwargs, shown", [(dict(pos_eps="x"), "'x'"), (dict(neg_eps=float("inf")), "inf")])
def test_bad_settings(kwargs, shown):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be .*{shown}"):
        ours.IntraPairVarianceLoss(**kwargs)


@pytest.mark.parametrize("name", ["IntraPairVarianceLoss", "HistogramLoss", "DynamicSoftMarginLoss", "ManifoldLoss",
                                  "VICRegLoss"])
def test_whole_batch_losses_are_marked(name):
    """The mark DistributedLoss / DistributedCrossBatchMemory read to refuse them on more than one process
    (tests/distributed/test_global_loss.py runs the refusal)."""
    assert getattr(ours, name).uses_batch_statistics
    assert not ours.ContrastiveLoss.uses_batch_statistics

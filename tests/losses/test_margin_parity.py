"""MarginLoss (and DivisorReducer) equal PML's in value and gradient (float64, 1e-10) for every
distance, from labels, pair and triplet tuples, ref_emb and sampled triplets; learned per-class beta
gets PML's gradient too."""

import pytest
import torch

import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, assert_close, compare_losses, make_batch, make_distances, run_mode,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")


def settings_for(inverted: bool) -> dict:
    return dict(margin=0.2, beta=0.4) if inverted else dict(margin=0.2, beta=1.0)


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_parity_every_distance(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    kwargs = settings_for(ours_dist.is_inverted)
    value = run_mode(mode, ours.MarginLoss(distance=ours_dist, **kwargs),
                     pml_losses.MarginLoss(distance=pml_dist, **kwargs), seed=51)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
def test_defaults(mode):
    run_mode(mode, ours.MarginLoss(), pml_losses.MarginLoss(), seed=52)


@pytest.mark.parametrize("mode", ["labels", "ref_emb"])
def test_sampled_triplets(mode):
    emb, labels = make_batch(53, batch_size=12)
    kwargs = dict(triplets_per_anchor=3)
    extra = {}
    if mode == "ref_emb":
        ref, ref_labels = make_batch(54, batch_size=10)
        extra = dict(ref_emb=ref, ref_labels=ref_labels)
    compare_losses(ours.MarginLoss(**kwargs), pml_losses.MarginLoss(**kwargs), emb, labels, seed=5, **extra)


@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
def test_reducers(reducer):
    for mode in ("labels", "triplets"):
        run_mode(mode, ours.MarginLoss(reducer=getattr(ours, reducer)()),
                 pml_losses.MarginLoss(reducer=getattr(pml_reducers, reducer)()), seed=55)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_learned_beta(num_classes):
    """Value, embedding and beta gradients equal PML's with learn_beta (nu > 0)."""
    emb, labels = make_batch(56, batch_size=12)
    kwargs = dict(learn_beta=True, nu=0.1, num_classes=num_classes)
    ours_loss, pml_loss = ours.MarginLoss(**kwargs).double(), pml_losses.MarginLoss(**kwargs).double()
    for loss in (ours_loss, pml_loss):
        with torch.no_grad():
            loss.beta.copy_(torch.linspace(0.9, 1.1, len(loss.beta), dtype=torch.float64))
    value = compare_losses(ours_loss, pml_loss, emb, labels)
    assert value > 1e-3
    assert_close(ours_loss.beta.grad, pml_loss.beta.grad, what="beta gradient")
    assert isinstance(ours_loss.beta, torch.nn.Parameter)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
def test_no_positives_or_no_negatives(labels):
    emb, _ = make_batch(57, batch_size=8)
    assert compare_losses(ours.MarginLoss(), pml_losses.MarginLoss(), emb, labels) == 0


def test_all_terms_inactive_is_a_connected_zero():
    """Divisor 0: a far margin boundary that every pair already satisfies."""
    emb, labels = make_batch(58)
    assert compare_losses(ours.MarginLoss(margin=-5), pml_losses.MarginLoss(margin=-5), emb, labels) == 0


@pytest.mark.parametrize("kwargs, shown", [(dict(margin="0.2"), "'0.2'"), (dict(triplets_per_anchor=0), "0"),
                                           (dict(num_classes=0), "0"), (dict(beta=float("nan")), "nan")])
def test_bad_settings(kwargs, shown):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be .*{shown}"):
        ours.MarginLoss(**kwargs)


def test_divisor_reducer_needs_divisor():
    with pytest.raises(ValueError, match="divisor"):
        ours.DivisorReducer()({"loss": {"losses": torch.ones(3), "indices": torch.arange(3),
                                        "reduction_type": "element"}}, torch.ones(3, 2), None)

"""MultiSimilarityLoss and CircleLoss equal PML's in value and gradient (float64, 1e-10); the masked
log-sum-exp helper follows PML's semantics."""

import pytest
import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.reducers as pml_reducers
import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as pml_lmu

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from dmlscale.kernels.logsumexp import masked_logsumexp
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, assert_close, compare_losses, make_batch, make_distances, run_mode,
)


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_multisim_parity(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    # base chosen inside the range of each kind so both hinge terms are active
    kwargs = dict(alpha=2, beta=10, base=0.3 if ours_dist.is_inverted else 1.0)
    value = run_mode(mode, ours.MultiSimilarityLoss(distance=ours_dist, **kwargs),
                     pml_losses.MultiSimilarityLoss(distance=pml_dist, **kwargs), seed=17)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("kwargs", [dict(), dict(alpha=1, beta=40, base=0.1), dict(alpha=5.5, beta=2, base=-0.2)])
def test_multisim_defaults_and_settings(kwargs, mode):
    value = run_mode(mode, ours.MultiSimilarityLoss(**kwargs), pml_losses.MultiSimilarityLoss(**kwargs), seed=18)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("kwargs", [dict(), dict(m=0.25, gamma=256), dict(m=0.1, gamma=8)],
                         ids=["default", "face", "soft"])
def test_circle_parity(kwargs, mode):
    value = run_mode(mode, ours.CircleLoss(**kwargs), pml_losses.CircleLoss(**kwargs), seed=19)
    assert value > 1e-3


@pytest.mark.parametrize("name", ["MultiSimilarityLoss", "CircleLoss"])
def test_ntxent_label_layout(name):
    gen = torch.Generator().manual_seed(2)
    emb_BD = torch.randn(32, 6, generator=gen, dtype=torch.float64)
    labels_B = torch.arange(16).repeat(2)
    value = compare_losses(getattr(ours, name)(), getattr(pml_losses, name)(), emb_BD, labels_B)
    assert value > 1e-3


@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
@pytest.mark.parametrize("name", ["MultiSimilarityLoss", "CircleLoss"])
def test_reducers(name, reducer):
    for mode in ("labels", "triplets"):
        run_mode(mode, getattr(ours, name)(reducer=getattr(ours, reducer)()),
                 getattr(pml_losses, name)(reducer=getattr(pml_reducers, reducer)()), seed=23)


def test_circle_rows_without_negatives_are_zero():
    """A pair tuple where one anchor only has positives: its row is masked to 0 (and dropped by AvgNonZero)."""
    emb_BD, labels_B = make_batch(5, batch_size=8, num_classes=2)
    from dmlscale.indices import all_pairs
    a1, p, a2, n = all_pairs(labels_B)
    keep = a2 != a1[0]
    tup = (a1, p, a2[keep], n[keep])
    compare_losses(ours.CircleLoss(), pml_losses.CircleLoss(), emb_BD, labels_B, indices_tuple=tup)
    compare_losses(ours.CircleLoss(reducer=ours.MeanReducer()),
                   pml_losses.CircleLoss(reducer=pml_reducers.MeanReducer()), emb_BD, labels_B, indices_tuple=tup)


@pytest.mark.parametrize("setting", [s for s in DISTANCE_SETTINGS if s[0] != "CosineSimilarity"],
                         ids=[i for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if s[0] != "CosineSimilarity"])
def test_circle_requires_cosine(setting):
    with pytest.raises(ValueError, match=f"CircleLoss requires distance CosineSimilarity, got {setting[0]}"):
        ours.CircleLoss(distance=getattr(ours_d, setting[0])(**setting[1]))


@pytest.mark.parametrize("kwargs, name", [(dict(alpha=0), "alpha"), (dict(beta=-1), "beta"), (dict(base="x"), "base")])
def test_multisim_bad_settings_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be .*{kwargs[name]!r}"):
        ours.MultiSimilarityLoss(**kwargs)


def test_circle_bad_gamma_is_named():
    with pytest.raises(ValueError, match="gamma must be a positive number, got 0"):
        ours.CircleLoss(gamma=0)


@pytest.mark.parametrize("add_one", [True, False])
def test_masked_logsumexp_matches_pml(add_one):
    gen = torch.Generator().manual_seed(0)
    x_BR = torch.randn(6, 7, generator=gen, dtype=torch.float64) * 30
    keep_BR = torch.rand(6, 7, generator=gen) < 0.4
    keep_BR[2] = False  # a row with nothing kept gives 0
    for keep in (keep_BR, None):
        ours_x = x_BR.clone().requires_grad_(True)
        pml_x = x_BR.clone().requires_grad_(True)
        ours_lse = masked_logsumexp(ours_x, keep, add_one=add_one)
        pml_lse = pml_lmu.logsumexp(pml_x, keep_mask=keep, add_one=add_one, dim=1)
        assert_close(ours_lse, pml_lse.squeeze(1), what="lse")
        (ours_lse * torch.arange(6)).sum().backward()
        (pml_lse.squeeze(1) * torch.arange(6)).sum().backward()
        assert_close(ours_x.grad, pml_x.grad, what="lse gradient")
    assert masked_logsumexp(x_BR, keep_BR, add_one=add_one)[2] == 0
    assert masked_logsumexp(x_BR, keep_BR, add_one=add_one, keepdim=True).shape == (6, 1)


def test_masked_logsumexp_rejects_bad_mask():
    with pytest.raises(ValueError, match="bool"):
        masked_logsumexp(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        masked_logsumexp(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))

"""ClipLoss and SigLipLoss equal open_clip's in value and gradient (float64), incl. logit_scale/bias grads."""

import pytest
import torch

from dmlscale.losses.clip_loss import ClipLoss
from dmlscale.losses.siglip_loss import SigLipLoss
from tests.parity import assert_close

open_clip_loss = pytest.importorskip("open_clip.loss")


def features(seed, n=10, dim=6):
    gen = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(2, n, dim, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1)


def grads_of(loss_fn, img, txt, scale, bias):
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (img, txt, scale, bias)]
    value = loss_fn(*leaves)
    value.backward()
    return value.detach(), [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scale_shape", [(), (1,)])
@pytest.mark.parametrize("seed", [0, 1])
def test_clip_matches_open_clip(seed, scale_shape, with_bias):
    img, txt = features(seed)
    scale = torch.full(scale_shape, 14.3, dtype=torch.float64)
    bias = torch.full(scale_shape, -1.7, dtype=torch.float64) if with_bias else None
    ours_v, ours_g = grads_of(lambda *a: ClipLoss()(*a), img, txt, scale, bias)
    ref_v, ref_g = grads_of(lambda *a: open_clip_loss.ClipLoss()(*a), img, txt, scale, bias)
    assert ours_v > 0.1
    assert_close(ours_v, ref_v)
    # a bias shifts every logit of a softmax row alike, so its exact gradient is 0: the machine's rounding
    # decides whether it comes out as 0 or as 1e-17, and neither is a failure
    *feature_and_scale_grads, bias_grad = ours_g if with_bias else (*ours_g, None)
    for g1 in feature_and_scale_grads:
        assert g1.abs().sum() > 0
    if bias_grad is not None:
        assert bias_grad.abs().max() < 1e-12
    for g1, g2 in zip(ours_g, ref_g):
        assert_close(g1, g2, what="gradient")


@pytest.mark.parametrize("scale_shape", [(), (1,)])
@pytest.mark.parametrize("seed", [0, 1])
def test_siglip_matches_open_clip(seed, scale_shape):
    img, txt = features(seed)
    scale = torch.full(scale_shape, 10.0, dtype=torch.float64)
    bias = torch.full(scale_shape, -10.0, dtype=torch.float64)
    ours_v, ours_g = grads_of(lambda *a: SigLipLoss()(*a), img, txt, scale, bias)
    ref_v, ref_g = grads_of(lambda *a: open_clip_loss.SigLipLoss()(*a), img, txt, scale, bias)
    assert ours_v > 0.1
    assert_close(ours_v, ref_v)
    for g1, g2 in zip(ours_g, ref_g):
        assert g1.abs().sum() > 0
        assert_close(g1, g2, what="gradient")


def test_output_dict_and_bad_inputs():
    img, txt = features(2)
    assert set(ClipLoss()(img, txt, 10.0, output_dict=True)) == {"contrastive_loss"}
    with pytest.raises(ValueError, match=r"\(10, 6\).*\(9, 6\)"):
        ClipLoss()(img, txt[:9], 10.0)
    with pytest.raises(ValueError, match=r"logit_scale.*\(2,\)"):
        SigLipLoss()(img, txt, torch.ones(2), 0.0)

"""The tiled CLIP kernel equals the materialised ClipLoss (and so open_clip) in value and gradients:
float64 within 1e-10, float32 within 1e-5, for tile sizes that do and do not divide the batch."""

import pytest
import torch

from dmlscale.losses.clip_loss import ClipLoss
from dmlscale.kernels.clip_siglip import tiled_clip_loss
from tests.parity import assert_close


def inputs(seed, n, dim, dtype):
    gen = torch.Generator().manual_seed(seed)
    img, txt = torch.nn.functional.normalize(torch.randn(2, n, dim, generator=gen, dtype=torch.float64), dim=2)
    return img.to(dtype), txt.to(dtype)


def value_and_grads(fn, img, txt, scale, bias):
    leaves = [t.clone().requires_grad_(True) if torch.is_tensor(t) else t for t in (img, txt, scale, bias)]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [t.grad for t in leaves if torch.is_tensor(t)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n, tile", [(37, 8), (64, 16), (50, 64), (33, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tiled_equals_materialised(n, tile, dtype, tol, with_bias):
    img, txt = inputs(n, n, 12, dtype)
    scale = torch.tensor([17.0], dtype=dtype)
    bias = torch.tensor([-2.5], dtype=dtype) if with_bias else None
    ours_v, ours_g = value_and_grads(lambda *a: tiled_clip_loss(*a, tile=tile), img, txt, scale, bias)
    ref_v, ref_g = value_and_grads(lambda *a: ClipLoss()(*a), img, txt, scale, bias)
    assert ref_v > 0.5
    assert_close(ours_v, ref_v, tol)
    for i, (g1, g2) in enumerate(zip(ours_g, ref_g)):
        assert i == 3 or g1.abs().sum() > 0  # the bias cancels in a softmax: its gradient is 0
        assert_close(g1, g2, tol, what="gradient")


def test_scalar_scale_and_large_logits_stay_finite():
    img, txt = inputs(0, 40, 8, torch.float64)
    ours_v, ours_g = value_and_grads(lambda *a: tiled_clip_loss(*a, tile=7), img, txt, torch.tensor(100.0, dtype=torch.float64), None)
    ref_v, ref_g = value_and_grads(lambda *a: ClipLoss()(*a), img, txt, torch.tensor(100.0, dtype=torch.float64), None)
    assert torch.isfinite(ours_v)
    assert_close(ours_v, ref_v)
    for g1, g2 in zip(ours_g, ref_g):
        assert_close(g1, g2, what="gradient")


def test_bad_tile_is_named():
    img, txt = inputs(0, 4, 3, torch.float64)
    with pytest.raises(ValueError, match="tile must be a positive int, got 0"):
        tiled_clip_loss(img, txt, 10.0, tile=0)


@pytest.mark.parametrize("tiled", [None, True, False])
def test_clip_loss_paths_agree_and_auto_switches(tiled):
    img, txt = inputs(5, 48, 6, torch.float64)
    scale = torch.tensor([9.0], dtype=torch.float64)
    plain_v, plain_g = value_and_grads(lambda *a: ClipLoss(tiled=False)(*a), img, txt, scale, None)
    loss = ClipLoss(tiled=tiled, tile_size=10, tiled_threshold=40)
    v, g = value_and_grads(lambda *a: loss(*a), img, txt, scale, None)
    assert_close(v, plain_v)
    for g1, g2 in zip(g, plain_g):
        assert_close(g1, g2, what="gradient")
    assert loss.uses_tiles(48) == (tiled is not False) and loss.uses_tiles(39) == bool(tiled)
    with pytest.raises(ValueError, match="tile_size must be a positive int, got 0"):
        ClipLoss(tile_size=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n, tile", [(37, 8), (50, 64), (33, 1)])
def test_tiled_siglip_equals_materialised(n, tile, dtype, tol):
    from dmlscale.losses.siglip_loss import SigLipLoss
    from dmlscale.kernels.clip_siglip import tiled_siglip_loss

    img, txt = inputs(n + 1, n, 12, dtype)
    scale, bias = torch.tensor([10.0], dtype=dtype), torch.tensor([-10.0], dtype=dtype)
    ours_v, ours_g = value_and_grads(lambda *a: tiled_siglip_loss(*a, tile=tile), img, txt, scale, bias)
    ref_v, ref_g = value_and_grads(lambda *a: SigLipLoss()(*a), img, txt, scale, bias)
    assert ref_v > 0.1
    assert_close(ours_v, ref_v, tol)
    for g1, g2 in zip(ours_g, ref_g):
        assert g1.abs().sum() > 0
        assert_close(g1, g2, tol, what="gradient")


def test_siglip_loss_auto_switches_to_tiles_with_same_result():
    from dmlscale.losses.siglip_loss import SigLipLoss

    img, txt = inputs(9, 45, 6, torch.float64)
    scale, bias = torch.tensor([8.0], dtype=torch.float64), torch.tensor([-6.0], dtype=torch.float64)
    auto = SigLipLoss(tile_size=16, tiled_threshold=40)
    assert auto.uses_tiles(45) and not auto.uses_tiles(39)
    v, g = value_and_grads(lambda *a: auto(*a), img, txt, scale, bias)
    ref_v, ref_g = value_and_grads(lambda *a: SigLipLoss(tiled=False)(*a), img, txt, scale, bias)
    assert_close(v, ref_v)
    for g1, g2 in zip(g, ref_g):
        assert_close(g1, g2, what="gradient")

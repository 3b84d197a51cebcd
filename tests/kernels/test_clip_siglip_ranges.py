"""The one-exp CLIP tile kernels stay exact at every logit range: their fast paths (one shift per
tile) and their exact fallbacks (columns far below the tile max, log-sum-exp spreads beyond the float
range) against torch.logsumexp / softmax and the materialised ClipLoss in float64."""

import math

import pytest
import torch

from dmlscale.losses.clip_loss import ClipLoss
from dmlscale.kernels.clip_siglip import clip_lse, clip_tile_grad, tiled_clip_loss
from tests.parity import assert_close


def features(seed, n, dim=6):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(2, n, dim, generator=gen, dtype=torch.float64), dim=2)


@pytest.mark.parametrize("scale", [14.0, 2000.0])
def test_lse_and_tile_gradient_against_direct_formulas(scale):
    img, txt = features(1, 37)
    logits = scale * img @ txt.t() - 3.0
    row_lse, col_lse = clip_lse(img, txt, scale, -3.0, tile=16)
    assert_close(row_lse, torch.logsumexp(logits, dim=1), 1e-10 * scale, "row lse")
    assert_close(col_lse, torch.logsumexp(logits, dim=0), 1e-10 * scale, "column lse")
    expected = torch.softmax(logits, dim=1) + torch.softmax(logits, dim=0)
    grad = clip_tile_grad(logits.clone(), row_lse, col_lse, torch.empty_like(logits))
    assert_close(grad, expected, 1e-12, "tile gradient")
    # the large scale does take the exact fallbacks: columns underflow against the tile max, and the
    # log-sum-exp spread exceeds 0.7 log(max float)
    info = torch.finfo(torch.float64)
    first_tile = logits[:16, :16]
    far_columns = bool(((first_tile.amax(dim=0) - first_tile.amax()) < 0.75 * math.log(info.tiny)).any())
    wide_spread = float(row_lse.max() - col_lse.min()) > 0.7 * math.log(info.max)
    assert far_columns == wide_spread == (scale > 100)


@pytest.mark.parametrize("scale", [14.0, 2000.0])
def test_tiled_loss_exact_at_huge_logit_ranges(scale):
    img, txt = features(2, 41)
    leaves = [[t.clone().requires_grad_(True) for t in (img, txt, torch.tensor([scale], dtype=torch.float64))]
              for _ in range(2)]
    ours = tiled_clip_loss(*leaves[0], tile=8)
    ref = ClipLoss(tiled=False)(*leaves[1])
    ours.backward()
    ref.backward()
    assert torch.isfinite(ours) and ref > 1.0
    assert_close(ours, ref, 1e-10 * scale)
    for a, b in zip(leaves[0], leaves[1]):
        assert_close(a.grad, b.grad, 1e-10 * scale, "gradient")

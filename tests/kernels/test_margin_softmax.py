"""kernels/margin_softmax.py against the dense formula (float64) and torch.autograd.gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from dmlscale.kernels.margin_softmax import block_logsumexp, merged_logsumexp, sum_with_part_grad

N, D, C = 7, 5, 9
TARGET = torch.tensor([0, 3, 8, -1, 2, -1, 8])  # -1: the row's class is in another block


def inputs():
    gen = torch.Generator().manual_seed(3)
    e_ND = F.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    w_DC = torch.randn(D, C, generator=gen, dtype=torch.float64).requires_grad_()
    return e_ND, w_DC


def dense(e_ND, w_DC, scale):
    cos_NC = e_ND @ F.normalize(w_DC, dim=0)
    rows = torch.nonzero(TARGET >= 0).squeeze(1)
    mask_NC = torch.zeros(N, C, dtype=torch.bool)
    mask_NC[rows, TARGET[rows]] = True
    lse_N = torch.logsumexp((cos_NC * scale).masked_fill(mask_NC, float("-inf")), dim=1)
    cos_target_N = torch.zeros(N, dtype=e_ND.dtype).index_put((rows,), cos_NC[rows, TARGET[rows]])
    return lse_N, cos_target_N


@pytest.mark.parametrize("tile", [1, 2, 4, 9, 64])
def test_block_logsumexp_equals_dense(tile):
    e_ND, w_DC = inputs()
    weights = torch.randn(2, N, dtype=torch.float64)
    got = block_logsumexp(e_ND, w_DC, TARGET, scale=3.0, tile=tile)
    want = dense(e_ND, w_DC, 3.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    got_grads = torch.autograd.grad(sum((weights[i] * got[i]).sum() for i in range(2)), (e_ND, w_DC))
    want_grads = torch.autograd.grad(sum((weights[i] * want[i]).sum() for i in range(2)), (e_ND, w_DC))
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_block_logsumexp_gradcheck_and_empty_rows():
    e_ND, w_DC = inputs()
    assert torch.autograd.gradcheck(lambda e, w: block_logsumexp(e, w, TARGET, scale=2.0, tile=2), (e_ND, w_DC))
    # a one-class block holding every row's target: nothing left, lse = -inf, gradients stay finite
    lse_N, cos_N = block_logsumexp(e_ND, w_DC[:, :1], torch.zeros(N, dtype=torch.long), scale=2.0, tile=4)
    assert torch.isneginf(lse_N).all()
    (lse_N.clamp_min(-5).sum() + cos_N.sum()).backward()
    assert torch.isfinite(e_ND.grad).all() and torch.isfinite(w_DC.grad).all()


def test_merged_parts_give_the_gradient_of_the_whole():
    x_N4 = torch.randn(N, 4, dtype=torch.float64, requires_grad=True)
    parts = [torch.logsumexp(x_N4[:, :1], 1), torch.logsumexp(x_N4[:, 1:], 1)]
    total_N = torch.logsumexp(x_N4, 1).detach()
    merged = sum(merged_logsumexp(p, total_N).sum() for p in parts)  # each part's own graph, summed
    got = torch.autograd.grad(merged, x_N4)[0]
    want = torch.autograd.grad(torch.logsumexp(x_N4, 1).sum(), x_N4)[0]  # the softmax, once
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    part_N = x_N4[:, 0]
    summed = sum_with_part_grad(part_N, x_N4.detach().sum(1))
    assert torch.equal(summed, x_N4.detach().sum(1))
    assert torch.equal(torch.autograd.grad(summed.sum(), x_N4)[0][:, 0], torch.ones(N, dtype=torch.float64))


def test_dtype_mismatch_is_a_value_error():
    e_ND, w_DC = inputs()
    with pytest.raises(ValueError, match="dtype"):
        block_logsumexp(e_ND.float(), w_DC, TARGET, scale=1.0, tile=2)

"""The non-finite guard's gradient check: one multi-tensor norm per dtype instead of a check per tensor."""

from __future__ import annotations

import pytest
import torch

from dmlscale.train.nonfinite import tensors_finite


def grads() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, 3, generator=generator), torch.randn(5, generator=generator),
            torch.randn(2, dtype=torch.float64, generator=generator), torch.randn(4, generator=generator).bfloat16(),
            torch.arange(3), torch.empty(0)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_a_nan_or_inf_in_any_tensor_of_any_float_dtype_is_seen(bad, which):
    tensors = grads()
    assert tensors_finite(tensors)
    tensors[which].view(-1)[-1] = bad
    assert not tensors_finite(tensors)


def test_nothing_to_check_is_finite_and_integer_tensors_are_left_out():
    assert tensors_finite([]) and tensors_finite([torch.arange(4), torch.empty(0)])

"""ShardedSubCenterArcFaceLoss, ShardedSoftTripleLoss, ShardedLargeMarginSoftmaxLoss, ShardedSphereFaceLoss,
ShardedProxyAnchorLoss and ShardedProxyNCALoss on real gloo processes, float64: the loss (the same on every
rank), each rank's embedding gradient and each rank's block of the class parameter equal PML 2.9's class
on the concatenated batch with the assembled parameter copied in, within 1e-10. World size 1 in this
process; 2-4 in one launch each, covering unequal local batches (one empty), K not divisible by W, class
tiles smaller than the blocks, a block with no target, a rank owning no class (K < W), data_parallel=True
(embedding gradient x W), and the seeded initial parameter being the same full matrix at any world size."""

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from dmlscale.distributed.sharded_proxies import ShardedProxyAnchorLoss, ShardedProxyNCALoss
from dmlscale.distributed.sharded_softmax_heads import (ShardedLargeMarginSoftmaxLoss, ShardedSoftTripleLoss,
                                                        ShardedSphereFaceLoss, ShardedSubCenterArcFaceLoss)
from tests.distributed.launch import results, run_world

D = 5
TOL = {"atol": 1e-10, "rtol": 0}

# name -> (our class, options (shared with PML), PML class, the PML parameter's name)
CASES = {
    "subcenter-arcface": (ShardedSubCenterArcFaceLoss, {}, pml_losses.SubCenterArcFaceLoss, "W"),
    "subcenter-arcface-2-m40-s20": (ShardedSubCenterArcFaceLoss, {"sub_centers": 2, "margin": 40.0, "scale": 20.0},
                                    pml_losses.SubCenterArcFaceLoss, "W"),
    "soft-triple": (ShardedSoftTripleLoss, {}, pml_losses.SoftTripleLoss, "fc"),
    "soft-triple-3": (ShardedSoftTripleLoss, {"centers_per_class": 3, "la": 8.0, "gamma": 0.3, "margin": 0.2},
                      pml_losses.SoftTripleLoss, "fc"),
    "large-margin": (ShardedLargeMarginSoftmaxLoss, {}, pml_losses.LargeMarginSoftmaxLoss, "W"),
    "large-margin-m3-s0.5": (ShardedLargeMarginSoftmaxLoss, {"margin": 3, "scale": 0.5},
                             pml_losses.LargeMarginSoftmaxLoss, "W"),
    "sphereface": (ShardedSphereFaceLoss, {}, pml_losses.SphereFaceLoss, "W"),
    "sphereface-m2-s2": (ShardedSphereFaceLoss, {"margin": 2, "scale": 2.0}, pml_losses.SphereFaceLoss, "W"),
    "proxy-anchor": (ShardedProxyAnchorLoss, {}, pml_losses.ProxyAnchorLoss, "proxies"),
    "proxy-anchor-m0.3-a8": (ShardedProxyAnchorLoss, {"margin": 0.3, "alpha": 8.0}, pml_losses.ProxyAnchorLoss,
                             "proxies"),
    "proxy-nca": (ShardedProxyNCALoss, {}, pml_losses.ProxyNCALoss, "proxies"),
    "proxy-nca-s3": (ShardedProxyNCALoss, {"softmax_scale": 3.0}, pml_losses.ProxyNCALoss, "proxies"),
}


def global_problem(name: str, total: int, num_classes: int, label_classes: int):
    """Embeddings (N x D, not unit), labels from the first `label_classes` classes, the full parameter."""
    cls, options, _, _ = CASES[name]
    gen = torch.Generator().manual_seed(11)
    x_ND = torch.randn(total, D, generator=gen, dtype=torch.float64) * 3
    labels_N = torch.randint(0, label_classes, (total,), generator=gen)
    full = torch.randn(*cls(num_classes, D, **options).full_shape, generator=gen, dtype=torch.float64) * 0.7
    return x_ND, labels_N, full


def value_and_grads(loss_fn, x_ND, labels_N, weight):
    x_ND = x_ND.clone().requires_grad_()
    value = loss_fn(x_ND, labels_N)
    value.backward()
    return value.item(), x_ND.grad, weight.grad


def _run_cases(rank, world_size, sizes, num_classes, label_classes, tile, data_parallel):
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    out = {}
    for name, (cls, options, _, _) in CASES.items():
        x_ND, labels_N, full = global_problem(name, sum(sizes), num_classes, label_classes)
        loss_fn = cls(num_classes, D, class_tile=tile, data_parallel=data_parallel, **options).double()
        loss_fn.load_full_weight(full)
        value, grad_x, grad_w = value_and_grads(loss_fn, x_ND[start:stop], labels_N[start:stop], loss_fn.weight)
        seeded = cls(num_classes, D, init_seed=3, **options)
        out[name] = {"value": value, "grad_x": grad_x, "grad_w": grad_w, "block": loss_fn.owned_blocks(),
                     "gathered_equal": bool(torch.equal(loss_fn.gather_full_weight(), full)),
                     "seeded_full": seeded.gather_full_weight()}
    return out


WORLDS = {  # id -> (local sizes, num_classes, classes the labels are drawn from, class tile, data_parallel)
    "w1": ([9], 7, 7, 2, False),
    "w2-unequal": ([8, 5], 11, 11, 2, False),
    "w3-empty-rank-data-parallel": ([6, 0, 7], 11, 11, 3, True),
    "w4-idle-block-rank-without-classes": ([4, 2, 5, 3], 3, 2, 1, False),  # rank 2: no target, rank 3: no class
}


@pytest.mark.parametrize("world", list(WORLDS))
def test_sharded_equals_pml_on_the_assembled_parameter(world):
    sizes, num_classes, label_classes, tile, data_parallel = WORLDS[world]
    world_size = len(sizes)
    if world_size == 1:  # no process group: the loss runs as one rank owning every class
        per_rank = [_run_cases(0, 1, sizes, num_classes, label_classes, tile, data_parallel)]
    else:
        per_rank = results(run_world(_run_cases, world_size, sizes, num_classes, label_classes, tile, data_parallel))
    grad_factor = world_size if data_parallel else 1
    for name, (cls, options, pml_cls, parameter) in CASES.items():
        x_ND, labels_N, full = global_problem(name, sum(sizes), num_classes, label_classes)
        pml = pml_cls(num_classes=num_classes, embedding_size=D, **options).double()
        getattr(pml, parameter).data = full.clone()
        value, grad_x, grad_full = value_and_grads(pml, x_ND, labels_N, getattr(pml, parameter))
        values = [outcome[name]["value"] for outcome in per_rank]
        assert all(v == values[0] for v in values), (name, values)  # bitwise the same on every rank
        assert values[0] == pytest.approx(value, abs=1e-10, rel=0), name
        single_seeded = cls(num_classes, D, init_seed=3, **options).weight.detach()
        for rank, outcome in enumerate(per_rank):
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            got = outcome[name]
            block = got["block"][cls.weight_name]
            assert got["gathered_equal"], (name, rank)
            torch.testing.assert_close(got["grad_x"], grad_factor * grad_x[start:stop], **TOL,
                                       msg=lambda m: f"{name}, rank {rank} embeddings: {m}")
            torch.testing.assert_close(got["grad_w"], block.of_full(grad_full), **TOL,
                                       msg=lambda m: f"{name}, rank {rank} block {block}: {m}")
            assert torch.equal(got["seeded_full"], single_seeded), (name, rank)  # the seed alone fixes it
        if world == "w4-idle-block-rank-without-classes":
            assert per_rank[3][name]["block"][cls.weight_name].start == per_rank[3][name]["block"][
                cls.weight_name].end == 3
            assert per_rank[2][name]["grad_w"].abs().sum() > 0  # the idle block still gets its gradient


def test_seeded_initial_values_follow_pml_initialisers():
    anchor = ShardedProxyAnchorLoss(400, 64, init_seed=1).proxies.detach()  # kaiming_normal_, fan_out = K
    assert anchor.shape == (400, 64) and anchor.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    triple = ShardedSoftTripleLoss(400, 64, centers_per_class=5, init_seed=1).fc.detach()  # kaiming_uniform_
    bound = 1 / math.sqrt(400 * 5)
    assert triple.abs().max().item() <= bound and triple.abs().max().item() > 0.99 * bound
    assert triple.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform's std
    subcenter = ShardedSubCenterArcFaceLoss(400, 64, sub_centers=2, init_seed=1).W.detach()
    assert subcenter.shape == (64, 800) and subcenter.std().item() == pytest.approx(1.0, rel=0.03)
    assert not torch.equal(ShardedProxyNCALoss(40, 8, init_seed=1).proxies, ShardedProxyNCALoss(40, 8, init_seed=2)
                           .proxies)


def test_bad_options_and_labels_are_value_errors():
    with pytest.raises(ValueError, match="sub_centers must be a positive int, got 0"):
        ShardedSubCenterArcFaceLoss(5, D, sub_centers=0)
    with pytest.raises(ValueError, match="margin must be a positive int, got 2.5"):
        ShardedSphereFaceLoss(5, D, margin=2.5)
    with pytest.raises(ValueError, match="gamma must be a finite positive number, got 0"):
        ShardedSoftTripleLoss(5, D, gamma=0)
    with pytest.raises(ValueError, match="alpha must be a finite positive number, got -1"):
        ShardedProxyAnchorLoss(5, D, alpha=-1)
    with pytest.raises(ValueError, match=r"label 5 at global row 1"):
        ShardedProxyNCALoss(5, D).double()(torch.randn(2, D, dtype=torch.float64), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"full weight must have shape \(5, 15\)"):
        ShardedSubCenterArcFaceLoss(5, D).load_full_weight(torch.zeros(D, 5))

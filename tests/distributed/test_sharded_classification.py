"""ShardedArcFaceLoss / ShardedCosFaceLoss / ShardedNormalizedSoftmaxLoss on real gloo processes: class
weights sharded by class, float64. Loss, embedding gradients and each rank's W-block gradient equal
(a) a dense single-process formula on the full matrix and (b) PML's ArcFaceLoss / CosFaceLoss /
NormalizedSoftmaxLoss on the concatenated batch with the full W copied into `loss.W`, within 1e-10; for
world sizes 1-4, unequal local batches (one empty), K not divisible by W, class tiles smaller than the
blocks, a rank whose block holds no target, and a rank owning no class at all (K < W); with
`data_parallel=True`, one SGD step of a DDP embedder plus the rank-owned blocks equals PML's step."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch.nn.parallel import DistributedDataParallel

from dmlscale.distributed.sharded_classification import (ShardedArcFaceLoss, ShardedCosFaceLoss,
                                                         ShardedMarginSoftmaxLoss, ShardedNormalizedSoftmaxLoss,
                                                         class_block)
from tests.distributed.launch import results, run_world

D = 6
TOL = {"atol": 1e-10, "rtol": 0}

# name -> (our class, options, PML class, PML options); one entry per margin type and a non-default one
CASES = {
    "arcface": (ShardedArcFaceLoss, {}, pml_losses.ArcFaceLoss, {}),
    "arcface-m40-s30": (ShardedArcFaceLoss, {"margin": 40.0, "scale": 30.0}, pml_losses.ArcFaceLoss,
                        {"margin": 40.0, "scale": 30.0}),
    "cosface": (ShardedCosFaceLoss, {}, pml_losses.CosFaceLoss, {}),
    "normalized-softmax": (ShardedNormalizedSoftmaxLoss, {}, pml_losses.NormalizedSoftmaxLoss, {}),
}


def global_problem(total: int, num_classes: int, label_classes: int):
    """Embeddings (N x D, not unit), labels drawn from the first `label_classes` classes, full W (D x K)."""
    gen = torch.Generator().manual_seed(7)
    x_ND = torch.randn(total, D, generator=gen, dtype=torch.float64) * 3
    labels_N = torch.randint(0, label_classes, (total,), generator=gen)
    weight_DK = torch.randn(D, num_classes, generator=gen, dtype=torch.float64)
    return x_ND, labels_N, weight_DK


def dense_reference(x_ND, labels_N, weight_DK, margin_type, margin, scale):
    """(a): the formula written out on the full N x K logits, float64."""
    cos_NK = F.normalize(x_ND, dim=1) @ F.normalize(weight_DK, dim=0)
    target_N = cos_NK[torch.arange(len(labels_N)), labels_N]
    if margin_type == "arcface":
        m = math.radians(margin)
        theta_N = torch.acos(target_N.clamp(-1, 1))
        target_N = torch.where(theta_N <= math.pi - m, torch.cos(theta_N + m), torch.cos(theta_N) - m * math.sin(m))
    elif margin_type == "cosface":
        target_N = target_N - margin
    one_hot_NK = F.one_hot(labels_N, weight_DK.shape[1]).bool()
    logits_NK = torch.where(one_hot_NK, target_N[:, None], cos_NK) * scale
    return F.cross_entropy(logits_NK, labels_N)


def value_and_grads(loss_fn, x_ND, labels_N, weight):
    x_ND = x_ND.clone().requires_grad_()
    value = loss_fn(x_ND, labels_N)
    value.backward()
    return value.item(), x_ND.grad, weight.grad


def _rank_run(rank, world_size, sizes, num_classes, label_classes, tile, data_parallel):
    x_ND, labels_N, weight_DK = global_problem(sum(sizes), num_classes, label_classes)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    out = {}
    for name, (cls, options, _, _) in CASES.items():
        loss_fn = cls(num_classes, D, class_tile=tile, data_parallel=data_parallel, **options).double()
        loss_fn.load_full_weight(weight_DK)
        value, grad_x, grad_w = value_and_grads(loss_fn, x_ND[start:stop], labels_N[start:stop], loss_fn.W)
        gathered = loss_fn.gather_full_weight()
        out[name] = {"value": value, "grad_x": grad_x, "grad_w": grad_w, "block": (loss_fn.class_start,
                     loss_fn.class_end), "gathered_equal": bool(torch.equal(gathered, weight_DK))}
    if data_parallel:  # end to end: a DDP embedder and the rank-owned block in one optimizer step
        model = DistributedDataParallel(embedder())
        loss_fn = ShardedArcFaceLoss(num_classes, D, class_tile=tile, data_parallel=True).double()
        loss_fn.load_full_weight(weight_DK)
        optimizer = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.5)
        loss_fn(model(x_ND[start:stop]), labels_N[start:stop]).backward()
        optimizer.step()
        out["ddp-step"] = {"model": [p.detach().clone() for p in model.module.parameters()],
                           "W": loss_fn.W.detach().clone()}
    return out


def embedder():
    torch.manual_seed(0)
    return torch.nn.Linear(D, D).double()


WORLDS = {  # id -> (local sizes, num_classes, classes the labels are drawn from, class tile, data_parallel)
    "w1": ([9], 11, 11, 2, False),
    "w2-unequal": ([8, 5], 11, 11, 2, False),
    "w3-unequal-empty-rank": ([6, 0, 7], 11, 11, 2, False),
    "w4-unequal-idle-block": ([3, 7, 2, 5], 11, 9, 2, False),   # blocks 3,3,3,2: rank 3's holds no target
    "w4-fewer-classes-than-ranks": ([4, 2, 5, 3], 3, 3, 1, False),  # rank 3 owns no class
    "w3-data-parallel": ([5, 4, 6], 10, 10, 3, True),
}


@pytest.mark.parametrize("world", list(WORLDS))
def test_sharded_equals_single_process_and_pml(world):
    sizes, num_classes, label_classes, tile, data_parallel = WORLDS[world]
    world_size = len(sizes)
    per_rank = results(run_world(_rank_run, world_size, sizes, num_classes, label_classes, tile, data_parallel))
    x_ND, labels_N, weight_DK = global_problem(sum(sizes), num_classes, label_classes)
    blocks = [class_block(num_classes, world_size, r) for r in range(world_size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == num_classes
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    grad_factor = world_size if data_parallel else 1
    for name, (cls, options, pml_cls, pml_options) in CASES.items():
        ours = cls(num_classes, D, **options)
        weight = weight_DK.clone().requires_grad_()
        dense = lambda x, y: dense_reference(x, y, weight, ours.margin_type, ours.margin, ours.scale)  # noqa: E731
        pml = pml_cls(num_classes=num_classes, embedding_size=D, **pml_options).double()
        pml.W.data = weight_DK.clone()
        references = {"dense": value_and_grads(dense, x_ND, labels_N, weight),
                      "pml": value_and_grads(pml, x_ND, labels_N, pml.W)}
        values = [outcome[name]["value"] for outcome in per_rank]
        assert all(v == values[0] for v in values), (name, values)  # bitwise the same on every rank
        for ref_name, (value, grad_x, grad_w) in references.items():
            assert value == pytest.approx(values[0], abs=1e-10, rel=0), (name, ref_name)
            for rank, outcome in enumerate(per_rank):
                start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
                c0, c1 = blocks[rank]
                got = outcome[name]
                assert got["block"] == (c0, c1) and got["gathered_equal"]
                torch.testing.assert_close(got["grad_x"], grad_factor * grad_x[start:stop], **TOL,
                                           msg=lambda m: f"{name} vs {ref_name}, rank {rank} embeddings: {m}")
                torch.testing.assert_close(got["grad_w"], grad_w[:, c0:c1], **TOL,
                                           msg=lambda m: f"{name} vs {ref_name}, rank {rank} W block: {m}")
    if data_parallel:  # the same SGD step as one process with PML on the concatenated batch
        model, pml = embedder(), pml_losses.ArcFaceLoss(num_classes=num_classes, embedding_size=D).double()
        pml.W.data = weight_DK.clone()
        optimizer = torch.optim.SGD([*model.parameters(), *pml.parameters()], lr=0.5)
        pml(model(x_ND), labels_N).backward()
        optimizer.step()
        for rank, outcome in enumerate(per_rank):
            c0, c1 = blocks[rank]
            for got, want in zip(outcome["ddp-step"]["model"], model.parameters()):
                torch.testing.assert_close(got, want.detach(), **TOL)
            torch.testing.assert_close(outcome["ddp-step"]["W"], pml.W.detach()[:, c0:c1], **TOL)
    if world == "w4-unequal-idle-block":  # the idle block still gets the (non-zero) softmax gradient
        assert per_rank[3]["arcface"]["grad_w"].abs().sum() > 0


def _bad_label_run(rank, world_size):
    loss_fn = ShardedArcFaceLoss(7, D, init_seed=0)
    labels = torch.tensor([1, 2]) if rank == 0 else torch.tensor([3, 7, 0])  # 7 is outside [0, 7)
    try:
        loss_fn(torch.randn(len(labels), D), labels)
    except ValueError as error:
        return str(error)
    return "no error"


def test_label_outside_classes_is_a_value_error_on_every_rank():
    messages = results(run_world(_bad_label_run, 2))
    assert messages[0] == messages[1]
    assert "label 7 at global row 3" in messages[0] and "[0, 7)" in messages[0]


def test_single_process_checks_and_tiles():
    x_ND, labels_N, weight_DK = global_problem(10, 5, 5)
    with pytest.raises(ValueError, match=r"label -1 at global row 0"):
        ShardedCosFaceLoss(5, D).double()(x_ND[:2], torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="margin_type must be one of"):
        ShardedMarginSoftmaxLoss(5, D, margin_type="sphereface")
    with pytest.raises(ValueError, match="class_tile must be a positive int, got 0"):
        ShardedArcFaceLoss(5, D, class_tile=0)
    with pytest.raises(ValueError, match="dtype"):
        ShardedArcFaceLoss(5, D)(x_ND, labels_N)  # float64 embeddings, float32 weights
    with pytest.raises(ValueError, match="one label per embedding"):
        ShardedArcFaceLoss(5, D).double()(x_ND, labels_N[:4])
    with pytest.warns(UserWarning, match="no effect"):
        ShardedMarginSoftmaxLoss(5, D, margin_type="normalized_softmax", margin=0.3)
    values = set()
    for tile in (1, 2, 5, 100):  # streamed and one-tile paths agree
        loss_fn = ShardedArcFaceLoss(5, D, class_tile=tile).double()
        loss_fn.load_full_weight(weight_DK)
        values.add(round(loss_fn(x_ND, labels_N).item(), 12))
    assert len(values) == 1
    assert [class_block(11, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert [class_block(3, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 3)]

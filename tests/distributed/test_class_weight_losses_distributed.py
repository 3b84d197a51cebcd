"""The margin-softmax losses under DistributedLoss on real gloo processes with DDP: reported loss and the
gradients of the model AND of the class weights equal one process on the concatenated batch (float64, 1e-10),
world sizes 1-3 with unequal local batches. Their already reduced terms (P2SGrad, regularizers) are refused.

Legend: N global rows, D_IN inputs, D_OUT embedding size, C classes.
"""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from dmlscale import losses, regularizers
from dmlscale.distributed import DistributedLoss
from tests.distributed.launch import results, run_world

D_IN, D_OUT, NUM_CLASSES = 6, 5, 7

CASES = {
    "arcface": lambda: losses.ArcFaceLoss(NUM_CLASSES, D_OUT, margin=20, scale=8),
    "cosface": lambda: losses.CosFaceLoss(NUM_CLASSES, D_OUT, scale=8),
    "large-margin": lambda: losses.LargeMarginSoftmaxLoss(NUM_CLASSES, D_OUT, margin=3),
    "sphereface": lambda: losses.SphereFaceLoss(NUM_CLASSES, D_OUT, margin=2),
    "subcenter": lambda: losses.SubCenterArcFaceLoss(NUM_CLASSES, D_OUT, scale=8, sub_centers=2),
    "normalized-softmax": lambda: losses.NormalizedSoftmaxLoss(NUM_CLASSES, D_OUT, temperature=0.3),
}


class ModelWithLosses(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedder = torch.nn.Linear(D_IN, D_OUT).double()
        self.losses = torch.nn.ModuleDict({name: make().double() for name, make in CASES.items()})

    def forward(self, x):
        return self.embedder(x)


def global_batch(total: int):
    gen = torch.Generator().manual_seed(3)
    x_ND = torch.randn(total, D_IN, generator=gen, dtype=torch.float64)
    labels_N = torch.randint(0, NUM_CLASSES - 1, (total,), generator=gen)  # the last class never appears
    return x_ND, labels_N


def grads_after(name, model, x, labels, distributed):
    module = model.module if distributed else model
    model.zero_grad()
    emb = model(x)  # through DDP's forward, which arms its gradient reduction
    loss_fn = module.losses[name]
    loss = DistributedLoss(loss_fn)(emb, labels) if distributed else loss_fn(emb, labels)
    # under DDP every parameter takes part in the gradient reduction: the other losses' weights join with 0
    loss = loss + 0 * sum(p.sum() for other, sub in module.losses.items() if other != name for p in sub.parameters())
    loss.backward()
    return loss.item(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def _rank_run(rank, world_size, sizes):
    x_ND, labels_N = global_batch(sum(sizes))
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    model = DistributedDataParallel(ModelWithLosses())
    return {name: grads_after(name, model, x_ND[start:stop], labels_N[start:stop], True) for name in CASES}


@pytest.mark.parametrize("sizes", [[9], [8, 5], [4, 9, 2]], ids=["w1", "w2-unequal", "w3-unequal"])
def test_distributed_equals_single_process(sizes):
    per_rank = results(run_world(_rank_run, len(sizes), sizes))
    x_ND, labels_N = global_batch(sum(sizes))
    single = ModelWithLosses()
    for name in CASES:
        value, grads = grads_after(name, single, x_ND, labels_N, False)
        assert value > 1e-3
        for rank, outcome in enumerate(per_rank):
            got_value, got_grads = outcome[name]
            assert abs(got_value - value) <= 1e-10, f"{name} rank {rank}: loss {got_value} != {value}"
            for i, (g, e) in enumerate(zip(got_grads, grads)):
                diff = (g - e).abs().max().item()
                assert diff <= 1e-10, f"{name} rank {rank} param {i}: grad diff {diff:.2e}"


# losses whose terms come already reduced (P2SGrad's MSE, a weight regularizer): no exact split across ranks
ALREADY_REDUCED = {
    "p2sgrad": lambda: losses.P2SGradLoss(D_OUT, NUM_CLASSES),
    "arcface-weight-regularizer": lambda: losses.ArcFaceLoss(NUM_CLASSES, D_OUT,
                                                             weight_regularizer=regularizers.LpRegularizer()),
}


def _already_reduced_rank(rank, world_size, name):
    torch.manual_seed(rank)
    try:
        DistributedLoss(ALREADY_REDUCED[name]())(torch.randn(6, D_OUT), torch.arange(6) % NUM_CLASSES)
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("name", list(ALREADY_REDUCED))
def test_already_reduced_terms_run_on_one_process_and_are_refused_across_ranks(name):
    emb_BD, labels_B = torch.randn(6, D_OUT), torch.arange(6) % NUM_CLASSES
    loss = ALREADY_REDUCED[name]()
    assert DistributedLoss(loss)(emb_BD, labels_B).item() == pytest.approx(loss(emb_BD, labels_B).item(), rel=1e-6)
    said = results(run_world(_already_reduced_rank, 2, name))
    assert all(s is not None and "already reduced value cannot be reduced across ranks" in s for s in said), said

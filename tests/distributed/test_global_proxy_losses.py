"""ProxyNCALoss and SoftTripleLoss under DistributedLoss on real gloo processes with DDP: the reported loss and
the gradients of the model and of the proxies equal one process on the concatenated batch (float64, 1e-10),
world sizes 1-4 with unequal local batches. ProxyAnchorLoss (each proxy pools the whole batch) and miner
tuples on per-sample losses (weights over the global largest count) are refused by name on several ranks.

Legend: N global rows, n local rows, D_IN input size, D_OUT embedding size.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from dmlscale import distances, losses, miners, reducers
from dmlscale.distributed import DistributedLoss
from tests.distributed.launch import results, run_world

D_IN, D_OUT, NUM_CLASSES = 6, 5, 4

CASES = {
    "proxy-nca": lambda: losses.ProxyNCALoss(NUM_CLASSES, D_OUT),
    "proxy-nca-cosine-sum": lambda: losses.ProxyNCALoss(NUM_CLASSES, D_OUT, softmax_scale=3,
                                                        distance=distances.CosineSimilarity(),
                                                        reducer=reducers.SumReducer()),
    "soft-triple": lambda: losses.SoftTripleLoss(NUM_CLASSES, D_OUT, centers_per_class=3),
    "soft-triple-dot-avg-nonzero": lambda: losses.SoftTripleLoss(
        NUM_CLASSES, D_OUT, centers_per_class=2, la=5, distance=distances.DotProductSimilarity(),
        reducer=reducers.AvgNonZeroReducer()),
}


class Embedder(torch.nn.Module):
    """A linear embedder and every case's loss as children, so DDP averages the proxies' gradients too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(D_IN, D_OUT).double()
        self.losses = torch.nn.ModuleDict({name: make().double() for name, make in CASES.items()})

    def forward(self, x):
        return self.embed(x)


def global_batch(total: int):
    gen = torch.Generator().manual_seed(7)
    x_ND = torch.randn(total, D_IN, generator=gen, dtype=torch.float64)
    labels_N = torch.arange(total) % NUM_CLASSES
    return x_ND, labels_N[torch.randperm(total, generator=gen)]


def value_and_grads(name, model, x, labels, distributed):
    module = model.module if distributed else model
    model.zero_grad()
    emb = model(x)
    loss_fn = module.losses[name]
    loss = DistributedLoss(loss_fn)(emb, labels) if distributed else loss_fn(emb, labels)
    # under DDP every parameter joins the gradient reduction: the other cases' proxies with weight 0
    others = sum(p.sum() for other, fn in module.losses.items() if other != name for p in fn.parameters())
    (loss + 0 * others).backward()
    return loss.item(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def refusal(make):
    try:
        make()
    except ValueError as error:
        return str(error)
    return None


def _rank_run(rank, world_size, sizes):
    x_ND, labels_N = global_batch(sum(sizes))
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    model = DistributedDataParallel(Embedder())
    out = {name: value_and_grads(name, model, x_ND[start:stop], labels_N[start:stop], True) for name in CASES}
    emb, labels = model.module(x_ND[start:stop]).detach(), labels_N[start:stop]
    anchor = losses.ProxyAnchorLoss(NUM_CLASSES, D_OUT, reducer=reducers.MeanReducer()).double()
    proxy_nca = model.module.losses["proxy-nca"]
    out["refused"] = {
        "proxy-anchor": refusal(lambda: DistributedLoss(anchor)(emb, labels)),
        "miner": refusal(lambda: DistributedLoss(proxy_nca, miner=miners.BatchHardMiner())(emb, labels)),
        "center-tuple": refusal(lambda: DistributedLoss(losses.CenterLoss(NUM_CLASSES, D_OUT).double())(
            emb, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))),
    }
    return out


@pytest.mark.parametrize("sizes", [[9], [8, 5], [7, 3, 5], [4, 9, 2, 6]],
                         ids=["w1", "w2-unequal", "w3-unequal", "w4-unequal"])
def test_per_sample_proxy_losses_equal_single_process(sizes):
    per_rank = results(run_world(_rank_run, len(sizes), sizes))
    x_ND, labels_N = global_batch(sum(sizes))
    for name in CASES:
        value, grads = value_and_grads(name, Embedder(), x_ND, labels_N, False)
        assert value > 1e-3, name
        for rank, outcome in enumerate(per_rank):
            got_value, got_grads = outcome[name]
            assert abs(got_value - value) <= 1e-10, f"{name} rank {rank}: loss {got_value} != {value}"
            for i, (g, e) in enumerate(zip(got_grads, grads)):
                diff = (g - e).abs().max().item()
                assert diff <= 1e-10, f"{name} rank {rank} param {i}: grad diff {diff:.2e}"
    for outcome in per_rank:
        said = outcome["refused"]
        if len(sizes) == 1:  # one process: a plain loss on the whole batch, miner and tuple included
            assert said == {"proxy-anchor": None, "miner": None, "center-tuple": None}, said
        else:
            assert "ProxyAnchorLoss compares embeddings with its learned proxies; ref_emb" in said["proxy-anchor"]
            assert f"under DistributedLoss with {len(sizes)} ranks it takes neither a miner" in said["miner"]
            assert said["center-tuple"].startswith("CenterLoss weighs samples by their count"), said


def test_one_process_applies_the_miner_of_a_per_sample_loss():
    """DistributedLoss used to drop the miner of a loss without a reference batch (CenterLoss, ProxyNCALoss):
    on one process it now mines the batch and equals the plain loss with that tuple."""
    torch.manual_seed(1)
    emb = torch.randn(12, D_OUT, dtype=torch.float64)
    labels = torch.arange(12) % 3
    miner = miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard")
    for loss in (losses.CenterLoss(3, D_OUT).double(), losses.ProxyNCALoss(3, D_OUT).double(),
                 losses.SoftTripleLoss(3, D_OUT, centers_per_class=2).double()):
        mined = loss(emb, labels, miner(emb, labels))
        assert abs(mined.item() - loss(emb, labels).item()) > 1e-3
        assert abs(DistributedLoss(loss, miner=miner)(emb, labels).item() - mined.item()) <= 1e-12

"""Streamed (tiled) triplet mining and pair losses under DistributedLoss on real gloo processes with
DDP: loss value and parameter gradients equal one process running the materialised loss on the
concatenated batch (float64, 1e-10), at world sizes 2 and 4 with unequal local batches. Tiles (3)
are smaller than every local batch, so each rank streams its local rows against the global batch."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from dmlscale import losses, miners, reducers
from dmlscale.distances import CosineSimilarity
from dmlscale.distributed import DistributedLoss
from tests.distributed.launch import results, run_world

D_IN, D_OUT, NUM_CLASSES, TILE = 6, 5, 4, 3


def tiling(tiled):
    return {"tiled": tiled, "tile_size": TILE}


# name -> (loss factory, miner factory or None), each taking `tiled`
CASES = {
    "batch-all": (lambda t: losses.TripletMarginLoss(margin=0.3, **tiling(t)), None),
    "batch-all-cosine-mean": (lambda t: losses.TripletMarginLoss(margin=0.2, distance=CosineSimilarity(),
                                                                 reducer=reducers.MeanReducer(), **tiling(t)), None),
    "batch-hard-loss": (lambda t: losses.BatchHardTripletLoss(margin=0.3, **tiling(t)), None),
    "triplet+batch-hard": (lambda t: losses.TripletMarginLoss(margin=0.3, **tiling(t)),
                           lambda t: miners.BatchHardMiner(**tiling(t))),
    "triplet+semihard": (lambda t: losses.TripletMarginLoss(margin=0.3, **tiling(t)),
                         lambda t: miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard", **tiling(t))),
    "multisim": (lambda t: losses.MultiSimilarityLoss(**tiling(t)), None),
    "contrastive": (lambda t: losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.2, **tiling(t)), None),
    "contrastive-threshold": (lambda t: losses.ContrastiveLoss(
        neg_margin=1.5, reducer=reducers.ThresholdReducer(low=0.1, high=0.9), **tiling(t)), None),
}


def global_batch(total: int):
    gen = torch.Generator().manual_seed(42)
    x_ND = torch.randn(total, D_IN, generator=gen, dtype=torch.float64)
    labels_N = torch.arange(total) % NUM_CLASSES
    labels_N = labels_N[torch.randperm(total, generator=gen)]
    labels_N[0] = NUM_CLASSES  # a singleton class: an anchor with no positive anywhere
    return x_ND, labels_N


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D_OUT).double()


def grads_after(name, net, x, labels, distributed):
    make_loss, make_miner = CASES[name]
    net.zero_grad()
    if distributed:
        miner = make_miner(True) if make_miner else None
        loss = DistributedLoss(make_loss(True), miner=miner)(net(x), labels)
    else:
        emb = net(x)
        miner = make_miner(False) if make_miner else None
        loss = make_loss(False)(emb, labels, miner(emb, labels) if miner else None)
    loss.backward()
    module = net.module if distributed else net
    return loss.item(), [p.grad.clone() for p in module.parameters()]


def _rank_run(rank, world_size, sizes):
    x_ND, labels_N = global_batch(sum(sizes))
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    net = DistributedDataParallel(model())
    return {name: grads_after(name, net, x_ND[start:stop], labels_N[start:stop], True) for name in CASES}


@pytest.mark.parametrize("sizes", [pytest.param([8, 5], id="w2-unequal"),
                                   pytest.param([4, 9, 2, 6], id="w4-unequal", marks=pytest.mark.slow)])
def test_streamed_distributed_equals_single_process_materialised(sizes):
    per_rank = results(run_world(_rank_run, len(sizes), sizes))
    x_ND, labels_N = global_batch(sum(sizes))
    for name in CASES:
        value, grads = grads_after(name, model(), x_ND, labels_N, False)
        assert value > 0.01, name
        for rank, outcome in enumerate(per_rank):
            got_value, got_grads = outcome[name]
            assert abs(got_value - value) <= 1e-10, f"{name} rank {rank}: loss {got_value} != {value}"
            for i, (g, e) in enumerate(zip(got_grads, grads)):
                diff = (g - e).abs().max().item()
                assert diff <= 1e-10, f"{name} rank {rank} param {i}: grad diff {diff:.2e}"

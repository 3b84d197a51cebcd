"""DistributedLossWrapper / DistributedMinerWrapper (PML's names) on real gloo processes: the loss on every
rank equals one process on the concatenated batch, and each rank's embedding gradient is W x the
single-process gradient of its rows (DistributedLoss's convention), for efficient=False and True alike."""

import warnings

import pytest
import torch

from dmlscale import losses, miners
from dmlscale.distributed import DistributedLossWrapper, DistributedMinerWrapper
from dmlscale.memory import CrossBatchMemory
from tests.distributed.launch import results, run_world

DIM, NUM_CLASSES, MEMORY = 5, 3, 40

# name -> (loss factory, miner factory or None)
CASES = {
    "triplet": (lambda: losses.TripletMarginLoss(margin=0.3), None),
    "contrastive": (lambda: losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.2), None),
    "triplet+semihard-miner": (lambda: losses.TripletMarginLoss(margin=0.3),
                               lambda: miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard")),
    "contrastive+pair-miner": (lambda: losses.ContrastiveLoss(), lambda: miners.PairMarginMiner()),
    "memory-triplet": (lambda: CrossBatchMemory(losses.TripletMarginLoss(margin=0.3), DIM, memory_size=MEMORY), None),
    "memory-contrastive": (lambda: CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=MEMORY), None),
}


def batches(total):
    gen = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(2):  # two steps: the memory cases also score against the first step's queue
        emb = torch.randn(total, DIM, generator=gen, dtype=torch.float64)
        labels = (torch.arange(total) % NUM_CLASSES)[torch.randperm(total, generator=gen)]
        steps.append((emb, labels))
    return steps


def run_case(name, steps, wrap, efficient=False):
    """[(loss value, embedding gradient)] per step; wrap=True uses the PML-named wrappers."""
    make_loss, make_miner = CASES[name]
    loss_fn, miner = make_loss(), (make_miner() if make_miner else None)
    if wrap:
        warnings.simplefilter("ignore")  # efficient=True warns that it has no effect
        loss_fn = DistributedLossWrapper(loss_fn, efficient=efficient)
        miner = None if miner is None else DistributedMinerWrapper(miner, efficient=efficient)
    out = []
    for emb, labels in steps:
        leaf = emb.clone().requires_grad_(True)
        indices = None if miner is None else miner(leaf, labels)
        loss = loss_fn(leaf, labels, indices)
        loss.backward()
        out.append((loss.item(), leaf.grad.clone()))
    return out


def _rank_run(rank, world_size, sizes):
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    steps = [(emb[start:stop], labels[start:stop]) for emb, labels in batches(sum(sizes))]
    out = {(name, efficient): run_case(name, steps, True, efficient) for name in CASES for efficient in (False, True)}
    emb, labels = steps[0]
    try:  # a plain (local) indices tuple has no global meaning here: refused by name
        DistributedLossWrapper(losses.TripletMarginLoss())(emb, labels, miners.TripletMarginMiner()(emb, labels))
        out["plain-tuple"] = "ran"
    except ValueError as error:
        out["plain-tuple"] = str(error)
    return out


@pytest.mark.parametrize("sizes", [[9], [5, 8], [4, 7, 3]], ids=["w1", "w2-unequal", "w3-unequal"])
def test_wrappers_equal_single_process(sizes):
    per_rank = results(run_world(_rank_run, len(sizes), sizes))
    steps = batches(sum(sizes))
    world_size = len(sizes)
    for name in CASES:
        expected = run_case(name, steps, wrap=False)
        assert all(value > 0 for value, _ in expected), name
        for rank, outcome in enumerate(per_rank):
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            for efficient in (False, True):
                for step, ((value, grad), (got_value, got_grad)) in enumerate(zip(expected, outcome[name, efficient])):
                    where = f"{name} efficient={efficient} rank {rank} step {step}"
                    assert abs(got_value - value) <= 1e-10, f"{where}: loss {got_value} != {value}"
                    diff = (got_grad / world_size - grad[start:stop]).abs().max().item()
                    assert diff <= 1e-10, f"{where}: grad diff {diff:.2e}"
            assert all(a[0] == b[0] and torch.equal(a[1], b[1])  # both efficient values: the same numbers
                       for a, b in zip(outcome[name, False], outcome[name, True])), name
            # one rank: local rows are the global rows, so a plain tuple is taken as it is
            assert ("only from DistributedMinerWrapper" in outcome["plain-tuple"]) == (world_size > 1), outcome["plain-tuple"]


def test_without_process_group_warns_and_returns_the_plain_loss():
    emb, labels = batches(10)[0]
    with pytest.warns(UserWarning, match=r"DistributedMinerWrapper\(efficient=True\) has no effect"):
        miner = DistributedMinerWrapper(miners.TripletMarginMiner(margin=0.5), efficient=True)
    indices = miner(emb, labels)
    with pytest.warns(UserWarning, match="non-distributed setting"):
        wrapped = DistributedLossWrapper(losses.TripletMarginLoss(margin=0.3))(emb, labels, indices)
    plain = losses.TripletMarginLoss(margin=0.3)(emb, labels, miners.TripletMarginMiner(margin=0.5)(emb, labels))
    assert wrapped.item() == plain.item() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory = DistributedLossWrapper(CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=MEMORY))
        mask = torch.arange(10) % 2 == 0
        assert memory(emb, labels, enqueue_mask=mask).item() > 0
        with pytest.raises(ValueError, match="not compatible with ref_emb"):
            memory(emb, labels, ref_emb=emb, ref_labels=labels)


@pytest.mark.parametrize("make, match", [
    (lambda: DistributedLossWrapper(losses.TripletMarginLoss(), efficient=1), "efficient must be a bool, got 1"),
    (lambda: DistributedMinerWrapper(miners.BatchHardMiner(), efficient="yes"), "efficient must be a bool, got 'yes'"),
    (lambda: DistributedLossWrapper(torch.nn.Linear(2, 2)), "got Linear"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()

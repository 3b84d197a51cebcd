"""Distributed cross-batch memory on real gloo processes: identical queues on every rank after several
steps with unequal local batches, equal to one process fed the concatenated batches; loss values equal
and local gradients equal W times the single-process gradient of those rows (DDP then averages)."""

import pytest
import torch

from dmlscale import losses, miners
from dmlscale.distributed import DistributedCrossBatchMemory
from dmlscale.memory import CrossBatchMemory
from tests.distributed.launch import results, run_world

DIM, MEMORY, STEPS = 5, 24, 4


def step_batch(step: int, sizes: list[int]):
    gen = torch.Generator().manual_seed(100 + step)
    total = sum(sizes) + step  # local sizes change from step to step
    emb = torch.randn(total, DIM, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (total,), generator=gen)
    return emb, labels


def local_sizes(step, sizes):
    out = list(sizes)
    out[step % len(sizes)] += step
    return out


def make_memory(variant):
    """"all-pairs", "batch-hard" (a miner) or "class-weighted" (a reducer that needs the query labels)."""
    reducer = losses.ClassWeightedReducer([0.5, 2.0, 1.5]) if variant == "class-weighted" else None
    return CrossBatchMemory(losses.TripletMarginLoss(margin=0.4, reducer=reducer), DIM, memory_size=MEMORY,
                            miner=miners.BatchHardMiner() if variant == "batch-hard" else None)


def _rank_run(rank, world_size, sizes, variant):
    cbm = DistributedCrossBatchMemory(make_memory(variant))
    out = []
    for step in range(STEPS):
        emb, labels = step_batch(step, sizes)
        sz = local_sizes(step, sizes)
        start = sum(sz[:rank])
        local = emb[start:start + sz[rank]].clone().requires_grad_(True)
        loss = cbm(local, labels[start:start + sz[rank]])
        loss.backward()
        out.append((loss.item(), local.grad.clone(), cbm.memory.embedding_memory.clone(), cbm.memory.label_memory.clone()))
    return out


@pytest.mark.parametrize("variant", ["all-pairs", "batch-hard", "class-weighted"])
@pytest.mark.parametrize("sizes", [[5, 3], [4, 6, 2]], ids=["w2", "w3"])
def test_identical_queues_and_exact_global_loss(sizes, variant):
    per_rank = results(run_world(_rank_run, len(sizes), sizes, variant))
    world_size = len(sizes)
    single = make_memory(variant)
    nonzero = 0
    for step in range(STEPS):
        emb, labels = step_batch(step, sizes)
        emb = emb.clone().requires_grad_(True)
        value = single(emb, labels)
        value.backward()
        sz = local_sizes(step, sizes)
        nonzero += value.item() != 0
        for rank, outs in enumerate(per_rank):
            got_value, got_grad, queue, queue_labels = outs[step]
            assert torch.equal(queue, single.embedding_memory) and torch.equal(queue_labels, single.label_memory)
            assert abs(got_value - value.item()) <= 1e-10, f"step {step} rank {rank}"
            start = sum(sz[:rank])
            expected_grad = emb.grad[start:start + sz[rank]] * world_size
            assert (got_grad - expected_grad).abs().max() <= 1e-10, f"step {step} rank {rank} gradient"
    assert nonzero >= 3

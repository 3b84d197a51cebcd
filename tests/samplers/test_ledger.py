"""Key ledger on real processes (gloo, tests/distributed/launch.py) at world sizes 1, 2 and 3 over 2 epochs:
each rank builds its own sampler (its global generators seeded differently, so nothing may depend on them),
draws through a DataLoader and writes down the indices of every step. The parent checks m samples per class
in every local and global batch, equal batch counts on all ranks, each sample at most once per epoch and
exactly once for class sizes that allow it, different epochs, and that a sampler restored on each rank
from the state after k batches yields exactly the rest of the uninterrupted run."""

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dmlscale.samplers import DistributedMPerClassSampler
from tests.distributed.launch import results, run_world
from tests.samplers.test_distributed_m_per_class_sampler import B, M, exact_labels, uneven_labels

pytestmark = pytest.mark.filterwarnings("ignore:.*classes have fewer than m=4 samples:UserWarning")
CASES = {"exact": exact_labels, "uneven": uneven_labels}
EPOCHS, RESUME_AT, SEED = 2, (1, 3), 11


def _rank_ledger(rank, world_size):
    torch.manual_seed(1000 + rank)
    np.random.seed(1000 + rank)
    out = {}
    for case, make_labels in CASES.items():
        labels = make_labels()
        sampler = DistributedMPerClassSampler(labels, M, B, rank=rank, world_size=world_size, seed=SEED)
        loader = DataLoader(range(len(labels)), batch_size=B, sampler=sampler)
        ledger = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            ledger.append([batch.tolist() for batch in loader])
        resumed = {}
        for k in RESUME_AT:
            sampler.set_epoch(1)
            iterator = iter(loader)
            for _ in range(k):
                next(iterator)
            state = pickle.loads(pickle.dumps(sampler.state_dict()))  # a checkpoint round trip
            restored = DistributedMPerClassSampler(labels, M, B, rank=rank, world_size=world_size, seed=SEED)
            restored.load_state_dict(state)
            restored.set_epoch(1)
            resumed[k] = [b.tolist() for b in DataLoader(range(len(labels)), batch_size=B, sampler=restored)]
            sampler.set_epoch(0)  # leave epoch 1, so the next set_epoch(1) starts it afresh
        out[case] = {"ledger": ledger, "resumed": resumed, "num_batches": sampler.num_batches,
                     "num_dropped": sampler.num_dropped}
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_key_ledger_over_two_epochs(world_size):
    per_rank = results(run_world(_rank_ledger, world_size))
    for case, make_labels in CASES.items():
        labels = make_labels()
        ranks = [r[case] for r in per_rank]
        num_batches = ranks[0]["num_batches"]
        assert num_batches > 0 and all(len(r["ledger"][e]) == num_batches for r in ranks for e in range(EPOCHS))
        epoch_sets = []
        for epoch in range(EPOCHS):
            drawn = []
            for step in range(num_batches):
                local = [r["ledger"][epoch][step] for r in ranks]
                for batch in local:
                    assert len(batch) == B and set(Counter(labels[batch].tolist()).values()) == {M}
                whole = sum(local, [])
                per_class = Counter(labels[whole].tolist())
                assert len(per_class) == world_size * B // M and set(per_class.values()) == {M}, (case, epoch, step)
                drawn += whole
            assert len(drawn) == len(set(drawn)) == num_batches * world_size * B  # at most once
            assert len(labels) - len(drawn) == ranks[0]["num_dropped"]
            if case == "exact":
                assert sorted(drawn) == list(range(len(labels)))  # exactly once
            else:
                assert {0, 1}.isdisjoint(labels[drawn].tolist())  # classes smaller than m
            epoch_sets.append(drawn)
        assert epoch_sets[0] != epoch_sets[1]
        if case == "uneven":
            assert set(epoch_sets[0]) != set(epoch_sets[1])
        for r in ranks:
            for k in RESUME_AT:
                assert r["resumed"][k] == r["ledger"][1][k:], (case, k)

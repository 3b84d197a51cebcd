"""Key ledger of the class-balanced shard loader on real processes (gloo, tests/distributed/launch.py) at world
sizes 1, 2 and 3 over 2 epochs, on real tar shards: 120 digits, 12 per class, m=4, global batch 24 (24, 12
and 8 per rank). Each rank builds its own loader (its global generators seeded differently, so nothing may
depend on them) and writes down the keys and labels of every batch. The parent checks: every label is the
one the tar holds for that key, m samples per class in every local and global batch, 5 batches on every
rank, every sample exactly once per epoch, different epochs, the same global batches at every world size
(rank slices concatenated = the 1-rank batch), and that a loader restored from the state after k batches
yields exactly the rest, on every rank and, from 2 or 3 ranks, on 1 rank."""

import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from dmlscale.data import make_loader
from tests.data.balanced_shards import per_class_digits, write_labelled
from tests.distributed.launch import results, run_world

M, GLOBAL_BATCH, EPOCHS, RESUME_AT, SEED = 4, 24, 2, (1, 3), 7


@pytest.fixture(scope="module")
def exact_shards(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("exact"), per_class_digits(12))


def loader_at(pattern, rank, world_size, **options):
    return make_loader(pattern, task="image_label", m_per_class=M, batch_size=GLOBAL_BATCH // world_size, rank=rank,
                       world_size=world_size, seed=SEED, **options)


def keys_and_labels(loader) -> list[tuple[list[str], list[int]]]:
    return [(batch["key"], batch["label"].tolist()) for batch in loader]


def _rank_ledger(rank, world_size, pattern):
    torch.manual_seed(1000 + rank)
    np.random.seed(1000 + rank)
    loader = loader_at(pattern, rank, world_size)
    ledger = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        ledger.append(keys_and_labels(loader))
    resumed = {}
    for k in (*RESUME_AT, 2):
        loader.set_epoch(0)
        loader.set_epoch(1)
        batches = iter(loader)
        for _ in range(k):
            next(batches)
        state = pickle.loads(pickle.dumps(loader.state_dict()))  # a checkpoint round trip
        restored = loader_at(pattern, rank, world_size)
        restored.load_state_dict(state)
        restored.set_epoch(1)
        resumed[k] = (keys_and_labels(restored), state)
    return {"ledger": ledger, "resumed": resumed, "num_batches": loader.num_batches}


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_key_ledger_over_two_epochs(world_size, exact_shards):
    labels = exact_shards["labels"]
    per_rank = results(run_world(_rank_ledger, world_size, exact_shards["pattern"]))
    assert [r["num_batches"] for r in per_rank] == [5] * world_size
    reference = loader_at(exact_shards["pattern"], 0, 1)  # one rank, in this process
    epochs = []
    for epoch in range(EPOCHS):
        assert all(len(r["ledger"][epoch]) == 5 for r in per_rank)
        reference.set_epoch(epoch)
        whole_batches = []
        for step in range(5):
            local = [r["ledger"][epoch][step] for r in per_rank]
            for keys, batch_labels in local:
                assert batch_labels == [labels[key] for key in keys]  # the tar's label for that key
                assert len(keys) == GLOBAL_BATCH // world_size and set(Counter(batch_labels).values()) == {M}
            whole = sum((keys for keys, _ in local), [])
            per_class = Counter(labels[key] for key in whole)
            assert len(per_class) == GLOBAL_BATCH // M and set(per_class.values()) == {M}, (epoch, step)
            whole_batches.append(whole)
        assert [keys for keys, _ in keys_and_labels(reference)] == whole_batches  # same plan at any world size
        drawn = sum(whole_batches, [])
        assert sorted(drawn) == sorted(labels)  # every sample exactly once
        epochs.append(whole_batches)
    assert epochs[0] != epochs[1]
    for r in per_rank:
        for k in RESUME_AT:
            assert r["resumed"][k][0] == r["ledger"][1][k:], k
    if world_size > 1:  # the state after 2 batches of epoch 1 (the same on every rank), resumed on 1 rank
        state = per_rank[0]["resumed"][2][1]
        assert all(r["resumed"][2][1] == state for r in per_rank)
        single = loader_at(exact_shards["pattern"], 0, 1)
        single.load_state_dict(state)
        single.set_epoch(1)
        assert [keys for keys, _ in keys_and_labels(single)] == epochs[1][2:]

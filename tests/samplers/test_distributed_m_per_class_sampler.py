"""DistributedMPerClassSampler in one process: validation, exact-once epochs, resume (also onto another
world size with the same global batch), refused states, and use as a DataLoader sampler / batch sampler.
The multi-process key ledger is in test_ledger.py."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from dmlscale.samplers import DistributedMPerClassSampler

M, B = 4, 8
pytestmark = pytest.mark.filterwarnings("ignore:.*classes have fewer than m=4 samples:UserWarning")


def exact_labels() -> np.ndarray:
    """12 classes of 4 x (1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 2) samples = 36 groups, shuffled: every sample fits
    exactly once per epoch at world sizes 1, 2, 3 (36 groups = 18 x 2 = 9 x 4 = 6 x 6 classes per batch)."""
    groups = [1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 2]
    return np.random.default_rng(0).permutation(np.repeat(np.arange(12) * 10, np.array(groups) * M))


def uneven_labels() -> np.ndarray:
    """Remainders, two classes smaller than m, and one class larger than the batches can take."""
    sizes = [2, 3, 5, 7, 9, 11, 4, 6, 13, 17, 8, 10, 40, 5, 21]
    return np.random.default_rng(1).permutation(np.repeat(np.arange(15), sizes))


def samplers(labels, world_size, batch_size=B, seed=7):
    return [DistributedMPerClassSampler(labels, M, batch_size, rank=r, world_size=world_size, seed=seed)
            for r in range(world_size)]


def global_batches(ranks, epoch):
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [list(DataLoader(range(sampler.num_batches * 999), batch_size=sampler.batch_size, sampler=sampler))
                for sampler in ranks]
    return [torch.cat(step).tolist() for step in zip(*per_rank)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_exact_labels_give_every_sample_once_per_epoch(world_size):
    labels = exact_labels()
    ranks = samplers(labels, world_size)
    assert ranks[0].num_batches == 36 // (world_size * B // M) and ranks[0].num_dropped == 0
    epochs = [global_batches(ranks, epoch) for epoch in range(2)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(len(labels)))
        for batch in batches:
            assert set(Counter(labels[batch].tolist()).values()) == {M}
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("resume_at", [0, 1, 3, 5])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_resume_after_k_batches_yields_exactly_the_rest(world_size, resume_at):
    labels = uneven_labels()
    for rank, (uninterrupted, sampler) in enumerate(zip(samplers(labels, world_size), samplers(labels, world_size))):
        uninterrupted.set_epoch(1)
        full = list(DataLoader(range(len(labels)), batch_size=B, sampler=uninterrupted))
        assert len(full) == uninterrupted.num_batches
        sampler.set_epoch(1)
        iterator = iter(DataLoader(range(len(labels)), batch_size=B, sampler=sampler))
        taken = [next(iterator) for _ in range(resume_at)]
        state = json.loads(json.dumps(sampler.state_dict()))  # as a checkpoint stores it
        assert state["epoch"] == 1 and state["batches_consumed"] == resume_at
        restored = samplers(labels, world_size)[rank]
        restored.load_state_dict(state)
        restored.set_epoch(1)  # the loop's own call keeps the state's position
        rest = list(DataLoader(range(len(labels)), batch_size=B, sampler=restored))
        assert [b.tolist() for b in taken + rest] == [b.tolist() for b in full]
        restored.set_epoch(2)
        assert len(list(restored)) == len(restored)  # the next epoch is whole again


def test_resume_onto_another_world_size_with_the_same_global_batch():
    labels = uneven_labels()
    two, three = samplers(labels, 2, batch_size=12), samplers(labels, 3, batch_size=8)
    full = global_batches(two, 0)
    states = []
    for sampler in two:
        sampler.set_epoch(0)
        iterator = iter(DataLoader(range(len(labels)), batch_size=12, sampler=sampler))
        next(iterator), next(iterator)
        states.append(sampler.state_dict())
    assert states[0] == states[1]  # identical on every rank
    for sampler in three:
        sampler.load_state_dict(states[0])
    rest = [torch.cat(step).tolist() for step in zip(*[list(DataLoader(range(len(labels)), batch_size=8, sampler=s))
                                                       for s in three])]
    assert rest == full[2:]


def test_states_for_another_layout_are_refused_by_name():
    labels = uneven_labels()
    state = samplers(labels, 2)[0].state_dict()
    with pytest.raises(ValueError, match=r"'seed': \(7, 8\)"):
        samplers(labels, 2, seed=8)[0].load_state_dict(state)
    with pytest.raises(ValueError, match=r"'global_batch_size': \(16, 24\)"):
        samplers(labels, 3)[0].load_state_dict(state)
    with pytest.raises(ValueError, match="labels_crc32"):
        samplers(labels[::-1].copy(), 2)[0].load_state_dict(state)
    with pytest.raises(ValueError, match=r"state\['batches_consumed'\] must be <= num_batches=\d+, got 99"):
        samplers(labels, 2)[0].load_state_dict({**state, "batches_consumed": 99})


def test_the_loop_can_name_the_batches_it_consumed():
    """With DataLoader workers the sampler runs ahead of the loop; the loop's count is what a resume needs."""
    sampler = samplers(uneven_labels(), 1)[0]
    list(sampler)
    assert sampler.state_dict()["batches_consumed"] == sampler.num_batches
    assert sampler.state_dict(batches_consumed=2)["batches_consumed"] == 2
    with pytest.raises(ValueError, match="batches_consumed must be <= num_batches"):
        sampler.state_dict(batches_consumed=sampler.num_batches + 1)


def test_works_as_a_batch_sampler():
    labels = exact_labels()
    sampler = samplers(labels, 1)[0]
    loader = DataLoader(range(len(labels)), batch_sampler=BatchSampler(sampler, B, drop_last=True))
    assert len(loader) == sampler.num_batches == 18
    batches = [batch.tolist() for batch in loader]
    assert sorted(sum(batches, [])) == list(range(len(labels)))
    assert all(set(Counter(labels[b].tolist()).values()) == {M} for b in batches)


def test_small_classes_are_never_drawn_and_warned_about():
    labels = uneven_labels()
    with pytest.warns(UserWarning, match="2 of 15 classes have fewer than m=4 samples"):
        sampler = DistributedMPerClassSampler(labels, M, B, rank=0, world_size=1)
    drawn = set(labels[list(sampler)].tolist())
    assert drawn.isdisjoint({0, 1}) and len(list(sampler)) == len(sampler)
    assert sampler.num_dropped == len(labels) - len(sampler)


BAD = [
    (dict(m=0, batch_size=8), "m must be a positive int, got 0"),
    (dict(m=3, batch_size=8), "batch_size must be a multiple of m, got batch_size=8, m=3"),
    (dict(m=4, batch_size=8, world_size=4),
     r"world_size x batch_size = 4 x 8 samples needs 8 classes with at least m=4 samples, labels have 3 such classes \(of 4\)"),
    (dict(m=4, batch_size=8, rank=2, world_size=2), "rank must be < world_size, got rank=2, world_size=2"),
    (dict(m=4, batch_size=8, world_size=0), "world_size must be a positive int, got 0"),
]


@pytest.mark.parametrize("arguments, named", BAD, ids=[a for a in ("m<1", "batch", "classes", "rank", "world")])
def test_bad_arguments_raise_value_errors_naming_them(arguments, named):
    labels = np.repeat(np.arange(4), [8, 8, 8, 3])
    arguments = {"rank": 0, "world_size": 1, **arguments}
    with pytest.raises(ValueError, match=named):
        DistributedMPerClassSampler(labels, **arguments)


@pytest.mark.parametrize("labels, named", [
    (np.zeros((4, 2), dtype=np.int64), r"labels must be 1-D integers, got shape \(4, 2\)"),
    (np.array([0.0, 1.0]), "labels must be 1-D integers, got dtype float64"),
    ("0123", "labels must be a torch tensor, numpy array or list of ints, got str"),
])
def test_labels_must_be_one_dimensional_integers(labels, named):
    with pytest.raises(ValueError, match=named):
        DistributedMPerClassSampler(labels, 1, 1, rank=0, world_size=1)


def test_with_loader_workers_the_loops_count_resumes_exactly():
    """Two DataLoader workers prefetch 4 batches: the sampler's own count runs ahead of the loop, the loop's
    count (state_dict(batches_consumed=k)) resumes exactly."""
    labels = uneven_labels()
    uninterrupted, sampler, restored = samplers(labels, 1) + samplers(labels, 1) + samplers(labels, 1)
    full = [b.tolist() for b in DataLoader(range(len(labels)), batch_size=B, sampler=uninterrupted)]
    iterator = iter(DataLoader(range(len(labels)), batch_size=B, sampler=sampler, num_workers=2))
    taken = [next(iterator).tolist() for _ in range(2)]
    assert sampler.state_dict()["batches_consumed"] > 2
    restored.load_state_dict(sampler.state_dict(batches_consumed=2))
    del iterator
    assert taken + [b.tolist() for b in DataLoader(range(len(labels)), batch_size=B, sampler=restored)] == full

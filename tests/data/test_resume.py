"""Exact mid-epoch resume: a loader restored from state_dict() yields exactly the batches not yet seen.

The reference is an uninterrupted epoch of a fresh loader; the interrupted one is a real partial
iteration (break after k batches, the DataLoader workers torn down), then a new loader restored from
the state dict, as after a crash.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from dmlscale.data.pipeline import make_loader
from dmlscale.data.plan import resampled_shards
from dmlscale.data.shard_list import list_shards
from tests.data.loader_shards import write_uneven_shards

BATCH = 8


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"))


def noisy_transform(image):
    """A random augmentation (noise from torch's global RNG), to show augmentations resume too."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255
    return pixels + 0.1 * torch.rand(1)


def loader_for(uneven, num_workers, **options):
    return make_loader(uneven["pattern"], batch_size=BATCH, rank=1, world_size=2, num_workers=num_workers, seed=11,
                       shuffle_buffer=30, image_transform=noisy_transform, **options)


def consume(loader, limit=None):
    batches = []
    for batch in loader:
        batches.append((batch["key"], batch["image"]))
        if limit is not None and len(batches) == limit:
            break
    return batches


@pytest.mark.parametrize("num_workers", [0, 2, 4])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(uneven, num_workers):
    reference = consume(loader_for(uneven, num_workers))
    assert len(reference) == 403 // (2 * BATCH)  # 25
    for stop_after in (1, 7):  # 7 is no multiple of 2 or 4 workers: the next batch is not worker 0's
        interrupted = loader_for(uneven, num_workers)
        seen = consume(interrupted, limit=stop_after)
        state = interrupted.state_dict()
        assert state["epoch"] == 0 and state["batches_consumed"] == stop_after
        resumed = loader_for(uneven, num_workers)
        resumed.load_state_dict(state)
        resumed.set_epoch(0)  # what a trainer does at the top of the epoch: keeps the position
        rest = consume(resumed)
        assert [keys for keys, _ in seen + rest] == [keys for keys, _ in reference]
        for (_, image), (_, expected) in zip(seen + rest, reference):
            assert torch.equal(image, expected), "augmentation differs after resume"
        ledger = collections.Counter(key for keys, _ in seen + rest for key in keys)
        assert max(ledger.values()) == 1 and len(ledger) == len(reference) * BATCH


def test_after_a_full_epoch_the_next_pass_is_the_next_epoch(uneven):
    loader = loader_for(uneven, 0)
    first = [keys for keys, _ in consume(loader)]
    second = [keys for keys, _ in consume(loader)]  # no set_epoch: must not repeat epoch 0's order
    assert loader.epoch == 1 and first != second
    explicit = loader_for(uneven, 0)
    explicit.set_epoch(1)
    assert [keys for keys, _ in consume(explicit)] == second
    state = loader.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (1, len(second))


def test_resampled_mode_is_balanced_and_resumable(uneven):
    options = dict(mode="resampled", samples_per_epoch=500)
    counts, reference = [], None
    for rank in range(3):
        loader = make_loader(uneven["pattern"], batch_size=BATCH, rank=rank, world_size=3, num_workers=2, seed=2,
                             shuffle_buffer=30, **options)
        batches = [batch["key"] for batch in loader]
        counts.append(len(batches))
        if rank == 2:
            reference = batches
    assert counts == [500 // (3 * BATCH)] * 3
    resumed = make_loader(uneven["pattern"], batch_size=BATCH, rank=2, world_size=3, num_workers=2, seed=2,
                          shuffle_buffer=30, **options)
    resumed.load_state_dict({**resumed.state_dict(), "batches_consumed": 5})
    assert [batch["key"] for batch in resumed] == reference[5:]


def test_resampled_shard_probabilities_follow_source_weights(uneven):
    """Shard j of source s is drawn with probability weight_s * size_j / size_s, normalised."""
    shard_set = list_shards([(uneven["sources"]["a"], 3.0), (uneven["sources"]["b"], 1.0)])
    sizes = [64, 64, 64, 64, 44, 23, 23, 23, 23, 8]  # the fixture's shard sizes, in pattern order
    expected = np.array([3 * s / 300 for s in sizes[:5]] + [1 * s / 100 for s in sizes[5:]]) / 4
    draws = resampled_shards(shard_set, 0, 0, 0)
    counts = np.bincount([next(draws) for _ in range(40_000)], minlength=10) / 40_000
    assert np.abs(counts - expected).max() < 0.01  # sd of each frequency < 0.0025


def test_a_state_that_cannot_be_resumed_is_refused_by_name(uneven):
    state = loader_for(uneven, 2).state_dict()
    for changed, needle in [({"seed": 12}, "seed"), ({"mode": "resampled"}, "mode"), ({"shards": "0" * 16}, "shards"),
                            ({"batches_consumed": 99}, "batches_consumed"), ({"num_batches": 24}, "num_batches"),
                            ({"segments": [{"world_size": 0}]}, "world_size"), ({"epoch": -1}, "epoch")]:
        with pytest.raises(ValueError, match=needle):
            loader_for(uneven, 2).load_state_dict({**state, **changed})

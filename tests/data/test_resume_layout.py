"""Resuming an epoch at another layout: a run saved at one world size, worker count or batch size and
resumed at another reads the rest of the epoch exactly once, leaving out less than one global batch.

Real partial iterations on the uneven shard set (403 samples in 12 shards, loader_shards.py): the
old layout's ranks consume k batches each, the state (identical on every rank) goes to the new
layout's ranks, which finish the epoch; the keys of all segments are then counted.
"""

from __future__ import annotations

import collections
import itertools

import pytest

from dmlscale.data.pipeline import make_loader
from tests.data.loader_shards import write_uneven_shards

NUM_SAMPLES = 403


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"))


def all_keys(uneven) -> set[str]:
    return set(itertools.chain.from_iterable(uneven["keys"].values()))


def ranks(uneven, *, world_size, batch_size=8, num_workers=0, state=None, **options):
    loaders = [make_loader(uneven["pattern"], batch_size=batch_size, rank=rank, world_size=world_size,
                           num_workers=num_workers, seed=4, shuffle_buffer=30, **options) for rank in range(world_size)]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
            loader.set_epoch(state["epoch"])  # what the trainer does: keeps the position
    return loaders


def consume(loaders, limit=None) -> tuple[list[str], dict]:
    """Keys of up to `limit` batches from every rank, and the state afterwards (equal on every rank)."""
    keys = []
    for loader in loaders:
        for count, batch in enumerate(loader, 1):
            keys += batch["key"]
            if count == limit:
                break
    states = [loader.state_dict() for loader in loaders]
    assert all(state == states[0] for state in states), "the stream state differs between ranks"
    return keys, states[0]


def check_epoch(uneven, keys, last_global_batch):
    ledger = collections.Counter(keys)
    assert max(ledger.values()) == 1, "a sample was read twice in one epoch"
    assert set(ledger) <= all_keys(uneven)
    assert NUM_SAMPLES - len(ledger) < last_global_batch, "more than one global batch of the epoch was lost"


@pytest.mark.parametrize("old_workers, new_workers", [(0, 0), (2, 3)])
def test_two_ranks_resumed_on_one_finish_the_epoch_once(uneven, old_workers, new_workers):
    first, state = consume(ranks(uneven, world_size=2, num_workers=old_workers), limit=7)
    assert len(first) == 2 * 7 * 8 and state["batches_consumed"] == 7
    (single,) = ranks(uneven, world_size=1, num_workers=new_workers, state=state)
    assert len(single) == single.num_batches == (NUM_SAMPLES - len(first)) // 8 == 36
    rest, after = consume([single])
    assert len(rest) == 36 * 8
    check_epoch(uneven, first + rest, 8)
    assert (after["epoch"], after["batches_consumed"], after["world_size"]) == (0, 36, 1)
    assert len(after["segments"]) == 1 and after["segments"][0]["world_size"] == 2
    following, _ = consume([single])  # the next epoch is planned normally
    assert single.epoch == 1 and single.num_batches == NUM_SAMPLES // 8 and len(set(following)) == 50 * 8


def test_one_rank_resumed_on_two_with_another_batch_size(uneven):
    first, state = consume(ranks(uneven, world_size=1), limit=9)
    pair = ranks(uneven, world_size=2, batch_size=6, num_workers=2, state=state)
    expected = (NUM_SAMPLES - 72) // 12
    assert [loader.num_batches for loader in pair] == [expected] * 2
    rest, _ = consume(pair)
    assert len(rest) == 2 * expected * 6
    check_epoch(uneven, first + rest, 12)


def test_nested_layout_changes_and_a_same_layout_resume_inside_a_segment(uneven):
    first, state = consume(ranks(uneven, world_size=2), limit=3)  # segment 0: 2 ranks x 8
    (single,) = ranks(uneven, world_size=1, batch_size=4, num_workers=2, state=state)  # segment 1
    reference = [batch["key"] for batch in ranks(uneven, world_size=1, batch_size=4, num_workers=2, state=state)[0]]
    second, state = consume([single], limit=10)
    assert second == list(itertools.chain.from_iterable(reference[:10]))
    # same layout, mid-segment: the rest of segment 1 is exactly the uninterrupted one
    (again,) = ranks(uneven, world_size=1, batch_size=4, num_workers=2, state=state)
    assert len(again) == len(reference) and state["batches_consumed"] == 10
    third, state = consume([again], limit=5)
    assert third == list(itertools.chain.from_iterable(reference[10:15]))
    pair = ranks(uneven, world_size=2, state=state)  # segment 2, back at 2 ranks x 8
    consumed = len(first) + len(second) + len(third)
    assert [loader.num_batches for loader in pair] == [(NUM_SAMPLES - consumed) // 16] * 2
    rest, final = consume(pair)
    check_epoch(uneven, first + second + third + rest, 16)
    assert [segment["world_size"] for segment in final["segments"]] == [2, 1]


def test_a_finished_epoch_resumed_elsewhere_starts_the_next_one(uneven):
    _, state = consume(ranks(uneven, world_size=2))
    (single,) = ranks(uneven, world_size=1, state=state)  # set_epoch(0) after the load keeps it finished
    fresh = ranks(uneven, world_size=1)[0]
    fresh.set_epoch(1)
    assert [b["key"] for b in single] == [b["key"] for b in fresh]
    assert single.epoch == 1 and single.num_batches == NUM_SAMPLES // 8


def test_resampled_mode_refuses_another_layout_by_name(uneven):
    options = dict(mode="resampled", samples_per_epoch=200)
    _, state = consume(ranks(uneven, world_size=2, **options), limit=2)
    with pytest.raises(ValueError, match="world_size=2.*world_size=1.*mode='resampled'"):
        ranks(uneven, world_size=1, state=state, **options)

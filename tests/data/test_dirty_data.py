"""Dirty shards: every kind of damage is skipped, counted by reason and logged sparingly, ranks stay
balanced, and too much damage stops the run with an error naming the shards.

The fixture (loader_shards.write_dirty_shards) derives the expected counts from how it damaged the
tars: which members it replaced or dropped and which members lie past each cut.
"""

from __future__ import annotations

import collections
import logging
import time

import pytest

from dmlscale.data.pipeline import make_loader
from dmlscale.data.skip_log import DirtyDataError
from dmlscale.data.tar_reader import read_samples
from tests.data.loader_shards import write_dirty_shards

PIXEL_CAP = 1_000_000  # the fixture's PNG bomb has 1500 x 1500 = 2.25 M pixels


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    return write_dirty_shards(tmp_path_factory.mktemp("dirty"))


def dirty_loader(dirty, **options):
    defaults = dict(batch_size=1, max_image_pixels=PIXEL_CAP, max_skip_fraction=0.5, skip_check_after=1000,
                    shuffle_buffer=5)
    return make_loader(dirty["pattern"], **{**defaults, **options})


def test_each_kind_of_damage_is_skipped_and_counted(dirty):
    loader = dirty_loader(dirty)
    assert loader.num_batches == dirty["num_planned"]  # planned from sizes.json, damage unknown up front
    started = time.perf_counter()
    keys = [key for batch in loader for key in batch["key"]]
    elapsed = time.perf_counter() - started
    assert loader.skipped == dirty["bad"]
    num_bad = sum(dirty["bad"].values())
    assert set(keys) == dirty["clean_keys"], "a clean sample was lost or a bad one got through"
    ledger = collections.Counter(keys)
    # the planned count stays: the bad positions are refilled with repeats of clean samples
    assert len(keys) == dirty["num_planned"] and sum(n - 1 for n in ledger.values()) == num_bad
    assert set(loader.skipped_by_shard) == set(dirty["shards"])
    assert elapsed < 5, f"skipping took {elapsed:.1f} s: nothing may sleep or decode the bomb"


def test_a_sample_split_across_a_tar_boundary_is_not_merged(dirty):
    d1, d2 = dirty["shards"][1], dirty["shards"][2]
    last = list(read_samples(d1, 1, 0, 7))[-1]
    first = next(read_samples(d2, 2, 0, 1))
    assert last.key == first.key
    assert set(last.fields) == {"jpg"} and "jpg" not in first.fields


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_stay_balanced_on_dirty_shards(dirty, num_workers):
    for world_size in (2, 3):
        counts, keys = [], []
        for rank in range(world_size):
            loader = dirty_loader(dirty, batch_size=2, rank=rank, world_size=world_size, num_workers=num_workers)
            batches = [batch["key"] for batch in loader]
            counts.append(len(batches))
            keys += [key for batch in batches for key in batch]
        assert counts == [dirty["num_planned"] // (2 * world_size)] * world_size
        assert set(keys) <= dirty["clean_keys"]


def test_too_much_damage_stops_with_the_shards_named(dirty):
    messages = []
    for num_workers in (0, 2):
        loader = dirty_loader(dirty, max_skip_fraction=0.05, skip_check_after=10, num_workers=num_workers)
        with pytest.raises(DirtyDataError, match=r"max_skip_fraction=0\.05") as caught:
            for _ in loader:
                pass
        assert any(shard in str(caught.value) for shard in dirty["shards"])
        messages.append(str(caught.value))
    # from a DataLoader worker the error arrives as itself: one line, not torch's "Caught ... Original Traceback"
    assert messages[1].startswith("rank 0 worker ") and "\n" not in messages[1], messages[1]


def test_skips_are_logged_at_a_limited_rate(dirty, caplog):
    num_bad = sum(dirty["bad"].values())
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        list(dirty_loader(dirty, log_interval_s=3600))
    quiet = [r for r in caplog.records if "skipped" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        list(dirty_loader(dirty, log_interval_s=0))
    chatty = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(quiet) == 1 and len(chatty) == num_bad


def test_a_shard_set_with_no_usable_sample_fails_instead_of_hanging(tmp_path):
    from tests.data.loader_shards import write_tar

    samples = [[(f"k{i}.jpg", b"not a jpeg"), (f"k{i}.txt", b"a caption")] for i in range(5)]
    write_tar(tmp_path / "bad.tar", samples)  # no sizes.json: the 5 samples are counted
    for mode in ("epoch", "resampled"):
        loader = make_loader(str(tmp_path / "bad.tar"), batch_size=2, mode=mode, skip_check_after=1000)
        with pytest.raises(DirtyDataError, match="bad.tar"):
            next(iter(loader))

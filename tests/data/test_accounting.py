"""Global data accounting: per-rank totals that sum to the same verdict at any world size, counted
repeats that match a hand count of duplicate keys, sizes.json disagreements, and unusable shards.

Shards are the real dirty set of loader_shards.write_dirty_shards (42 planned positions, 12 bad) and
clean digits written with the project's writer, edited on disk where a test needs a broken listing.
"""

from __future__ import annotations

import collections
import json
import logging

import pytest

from dmlscale.data.accounting import check_totals, empty_totals, merge_totals
from dmlscale.data.pipeline import make_loader
from dmlscale.data.shard_list import MISSING_SHARD, NOT_A_TAR, list_shards
from dmlscale.data.shards import write_shards
from dmlscale.data.skip_log import DirtyDataError
from dmlscale.data.sources import digits_samples
from tests.data.loader_shards import write_dirty_shards

PIXEL_CAP = 1_000_000
LIMITS = dict(max_skip_fraction=0.1, skip_check_after=30, max_repeat_fraction=0.05)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    return write_dirty_shards(tmp_path_factory.mktemp("dirty"))


def dirty_epoch(dirty, *, world_size, num_workers, batch_size=2, **options):
    """(keys yielded by all ranks in epoch 0, [each rank's totals()])."""
    keys, totals = [], []
    for rank in range(world_size):
        loader = make_loader(dirty["pattern"], batch_size=batch_size, rank=rank, world_size=world_size,
                             num_workers=num_workers, max_image_pixels=PIXEL_CAP, shuffle_buffer=5, **options)
        keys += [key for batch in loader for key in batch["key"]]
        totals.append(loader.totals())
    return keys, totals


def clean_shards(folder, num_samples=48, per_shard=16) -> dict:
    samples = [s for _, s in zip(range(num_samples), digits_samples("train", image_size=8))]
    return write_shards(samples, folder, samples_per_shard=per_shard)


def test_the_same_damage_stops_the_run_at_any_world_size(dirty):
    # locally, each of 2 ranks x 2 workers sees fewer than skip_check_after=30 samples: nothing stops
    _, local_totals = dirty_epoch(dirty, world_size=2, num_workers=2, max_skip_fraction=0.1, skip_check_after=30)
    both = merge_totals(local_totals)
    assert both["seen"] >= 30 and both["skipped"] > 0.1 * both["seen"], "the sum is over the limit"
    with pytest.raises(DirtyDataError, match="max_skip_fraction=0.1"):  # the old per-worker check, at 1 rank
        dirty_epoch(dirty, world_size=1, num_workers=0, max_skip_fraction=0.1, skip_check_after=30)
    for world_size, num_workers in ((1, 0), (2, 2), (3, 0)):
        _, totals = dirty_epoch(dirty, world_size=world_size, num_workers=num_workers, local_skip_check=False,
                                max_skip_fraction=0.1, skip_check_after=30)
        merged = merge_totals(totals)
        assert merged["seen"] >= 30 and merged["skipped"] > 0.1 * merged["seen"]
        with pytest.raises(DirtyDataError) as caught:
            check_totals(merged, **LIMITS)
        message = str(caught.value)
        assert message.startswith(f"bad data: {merged['skipped']} of {merged['seen']} samples read were skipped (")
        assert "> data.max_skip_fraction=0.1) over all ranks and epochs; reasons: " in message
        assert "truncated tar: " in message and dirty["shards"][3] in message


def test_local_skip_check_off_still_stops_when_nothing_usable_is_left(tmp_path):
    from tests.data.loader_shards import write_tar

    write_tar(tmp_path / "bad.tar", [[(f"k{i}.jpg", b"not a jpeg"), (f"k{i}.txt", b"x")] for i in range(5)])
    loader = make_loader(str(tmp_path / "bad.tar"), batch_size=2, local_skip_check=False, skip_check_after=1)
    with pytest.raises(DirtyDataError, match="bad.tar"):
        next(iter(loader))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_counted_repeats_equal_the_duplicate_keys_of_an_epoch(dirty, world_size, num_workers):
    keys, totals = dirty_epoch(dirty, world_size=world_size, num_workers=num_workers, local_skip_check=False)
    merged = merge_totals(totals)
    duplicates = sum(count - 1 for count in collections.Counter(keys).values())
    assert duplicates > 0 and merged["repeats"] == duplicates
    assert merged["seen"] - merged["skipped"] == len(keys)  # every good sample read was handed out
    assert set(keys) <= dirty["clean_keys"]


def test_repeats_beyond_the_limit_stop_with_the_shards_named(dirty):
    _, totals = dirty_epoch(dirty, world_size=2, num_workers=0, local_skip_check=False)
    merged = merge_totals(totals)
    with pytest.raises(DirtyDataError) as caught:  # skips allowed, repeats not
        check_totals(merged, max_skip_fraction=1.0, skip_check_after=1, max_repeat_fraction=0.05)
    trained = merged["seen"] - merged["skipped"]
    assert str(caught.value).startswith(f"bad data: {merged['repeats']} of {trained} trained samples were repeats (")
    assert "data.max_repeat_fraction=0.05" in str(caught.value) and dirty["shards"][0] in str(caught.value)
    check_totals(merged, max_skip_fraction=1.0, skip_check_after=1, max_repeat_fraction=1.0)  # within limits


def test_totals_span_passes_and_a_resume_replay_is_not_counted_twice(dirty):
    def loader():
        return make_loader(dirty["pattern"], batch_size=2, num_workers=0, max_image_pixels=PIXEL_CAP,
                           shuffle_buffer=5, local_skip_check=False)

    whole = loader()
    list(whole)
    one_epoch = whole.totals()
    list(whole)  # epoch 1 adds to the same totals
    assert whole.totals()["seen"] > one_epoch["seen"] and whole.epoch == 1
    interrupted = loader()
    for count, _ in enumerate(interrupted, 1):
        if count == 9:
            break
    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    list(resumed)  # replays the first 9 batches, then finishes epoch 0
    assert merge_totals([interrupted.totals(), resumed.totals()]) == one_epoch


def test_merge_and_check_validate_their_input():
    one = {**empty_totals(), "seen": 10, "skipped": 2, "by_reason": {"bad image": 2}, "by_shard": {"a.tar": 2},
           "size_mismatch": {"a.tar": [5, 7]}}
    merged = merge_totals([one, one, empty_totals()])
    assert (merged["seen"], merged["skipped"], merged["by_reason"]) == (20, 4, {"bad image": 4})
    assert merged["size_mismatch"] == {"a.tar": [5, 7]}
    check_totals(merged, max_skip_fraction=0.1, skip_check_after=21, max_repeat_fraction=0.0)  # too few seen
    with pytest.raises(DirtyDataError, match=r"4 of 20 samples read were skipped \(20\.0% > .*a\.tar \(4\)"
                                             r".*a\.tar \(lists 5, holds 7\)"):
        check_totals(merged, max_skip_fraction=0.1, skip_check_after=20, max_repeat_fraction=0.0)
    for bad, needle in [([{"seen": 1}], "lacks"), ([{**one, "seen": -1}], "'seen'"), ("x", "list"),
                        ([[1]], "totals dict")]:
        with pytest.raises(ValueError, match=needle):
            merge_totals(bad)
    with pytest.raises(ValueError, match="max_skip_fraction"):
        check_totals(one, max_skip_fraction=1.5, skip_check_after=1, max_repeat_fraction=0)


def test_sizes_json_under_and_over_counting_warns_with_both_counts(tmp_path, caplog):
    written = clean_shards(tmp_path / "under", num_samples=40, per_shard=40)
    shard = written["shards"][0]
    for listed, reads in ((10, "under"), (50, "over")):
        (tmp_path / "under" / "sizes.json").write_text(json.dumps({"000000.tar": listed}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
            loader = make_loader(shard, batch_size=2, task="image_label", local_skip_check=False)
            keys = [key for batch in loader for key in batch["key"]]
        assert loader.num_batches == listed // 2 and len(keys) == listed
        assert loader.totals()["size_mismatch"] == {shard: [listed, 40]}, reads
        expected = f"sizes.json lists {listed} samples for {shard} but the tar holds 40"
        assert sum(expected in record.getMessage() for record in caplog.records) == 1
        if listed > 40:  # positions the tar does not hold are truncated skips, and the last read may be cut
            assert loader.skipped["truncated tar"] in (10, 11)
        else:
            assert loader.num_skipped == 0 and len(set(keys)) == listed
    (tmp_path / "under" / "sizes.json").write_text(json.dumps({"000000.tar": 40}))
    exact = make_loader(shard, batch_size=2, task="image_label")
    list(exact)
    assert exact.totals()["size_mismatch"] == {}


def test_missing_and_non_tar_shards_raise_by_name_or_count_as_skips(tmp_path):
    written = clean_shards(tmp_path / "s")
    missing, garbage = written["shards"][1], written["shards"][2]
    (tmp_path / "s" / "000001.tar").unlink()
    (tmp_path / "s" / "000002.tar").write_bytes(b"no tar here" * 200)
    pattern = str(tmp_path / "s" / "{000000..000002}.tar")
    with pytest.raises(ValueError, match="000001.tar.*does not exist"):
        list_shards(pattern)
    with pytest.raises(ValueError, match="000002.tar.*is not a tar"):
        list_shards(str(tmp_path / "s" / "000002.tar"))
    with pytest.raises(ValueError, match="'ignore'"):
        list_shards(pattern, missing_shards="ignore")
    shard_set = list_shards(pattern, missing_shards="skip")
    assert [s.problem for s in shard_set.shards] == [None, MISSING_SHARD, NOT_A_TAR]
    assert shard_set.num_samples == 48  # planned from sizes.json
    loader = make_loader(pattern, batch_size=4, missing_shards="skip", local_skip_check=False, task="image_label")
    keys = [key for batch in loader for key in batch["key"]]
    assert loader.num_batches == 12 and len(keys) == 48
    assert loader.skipped == {MISSING_SHARD: 16, NOT_A_TAR: 16}
    assert loader.skipped_by_shard == {missing: 16, garbage: 16}
    assert len(set(keys)) == 16  # only the first shard is usable: the rest are repeats, counted as such
    assert loader.totals()["repeats"] == 32
    with pytest.raises(DirtyDataError, match="missing shard: 16, not a tar: 16"):
        check_totals(loader.totals(), **LIMITS)

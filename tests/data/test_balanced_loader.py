"""The class-balanced shard loader on one process: DataLoader workers give the same batches (and resume), bad
samples are skipped, counted and replaced by one of their class (fresh from the leftovers where the sizes
leave some, else a counted repeat), a tar cut after or before indexing never hangs, a class with nothing
readable left stops with its name, and bad arguments or states are refused by name."""

import logging
import shutil
import signal
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from dmlscale.data import DirtyDataError, make_loader
from dmlscale.data.label_index import read_index
from tests.data.balanced_shards import first_of_classes, per_class_digits, write_labelled

M, BATCH, SEED = 4, 24, 3


@pytest.fixture(scope="module")
def digits12():
    return per_class_digits(12)


@pytest.fixture(scope="module")
def exact_bad(tmp_path_factory, digits12):
    """120 samples, 12 per class; the first of classes 3 and 5 is not an image."""
    return write_labelled(tmp_path_factory.mktemp("exact_bad"), digits12, bad_keys=first_of_classes(digits12, (3, 5)))


def balanced(pattern, **options):
    options = {"task": "image_label", "m_per_class": M, "batch_size": BATCH, "seed": SEED, **options}
    return make_loader(pattern, **options)


@contextmanager
def deadline(seconds):
    """Fail instead of hanging."""
    def expired(*_):
        raise TimeoutError(f"the loader did not finish within {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def epoch_of(loader, labels, epoch=None):
    """The epoch's keys, after checking each batch: m per class, labels as the tars hold them."""
    if epoch is not None:
        loader.set_epoch(epoch)
    keys = []
    for batch in loader:
        assert batch["label"].tolist() == [labels[key] for key in batch["key"]]
        assert set(Counter(batch["label"].tolist()).values()) == {M} and len(batch["key"]) == BATCH
        keys += batch["key"]
    return keys


def test_bad_samples_are_counted_and_replaced_by_repeats_when_every_sample_is_planned(exact_bad):
    labels, bad = exact_bad["labels"], exact_bad["bad"]
    loader = balanced(exact_bad["pattern"])
    for epoch in range(2):
        before = loader.totals()
        keys = epoch_of(loader, labels, epoch)
        totals = loader.totals()
        assert len(keys) == 120 and bad.isdisjoint(keys)
        # an exact fit plans every sample, so both bad ones are read, each replaced by another of its class
        assert totals["by_reason"]["bad image"] - before["by_reason"].get("bad image", 0) == 2
        assert totals["repeats"] - before["repeats"] == 2
        twice = [key for key, count in Counter(keys).items() if count == 2]
        assert sorted(labels[key] for key in twice) == [3, 5] and len(set(keys)) == 118
    assert totals["seen"] - totals["skipped"] == 240 and totals["skipped"] == 4
    assert sum(totals["by_shard"].values()) == 4


def test_leftovers_replace_bad_samples_without_repeats(tmp_path):
    samples = per_class_digits(15)  # 3 groups of 4 per class, 3 leftovers: one for each group
    shards = write_labelled(tmp_path, samples, bad_keys=first_of_classes(samples, (1, 2)))
    loader = balanced(shards["pattern"])
    for epoch in range(2):
        keys = epoch_of(loader, shards["labels"], epoch)
        assert len(keys) == len(set(keys)) == 120 and shards["bad"].isdisjoint(keys)  # at most once
    totals = loader.totals()
    assert totals["repeats"] == 0 and totals["seen"] - totals["skipped"] == 240
    assert set(totals["by_reason"]) == {"bad image"} and 1 <= totals["skipped"] <= 4  # read when planned


def test_workers_give_the_same_batches_and_resume(exact_bad):
    def run(loader):
        return [(b["key"], b["label"], b["image"]) for b in loader]

    plain = run(balanced(exact_bad["pattern"]))
    workers = balanced(exact_bad["pattern"], num_workers=2, multiprocessing_context="fork")
    with deadline(60):
        parallel = run(workers)
        assert [b[0] for b in parallel] == [b[0] for b in plain]
        assert all(torch.equal(p[1], q[1]) and torch.equal(p[2], q[2]) for p, q in zip(parallel, plain))
        assert workers.totals()["by_reason"] == {"bad image": 2} and workers.totals()["repeats"] == 2
        workers.set_epoch(1)
        batches = iter(workers)
        first = [next(batches)["key"] for _ in range(2)]
        state = workers.state_dict()
        rest = [b["key"] for b in batches]
        restored = balanced(exact_bad["pattern"], num_workers=2, multiprocessing_context="fork")
        restored.load_state_dict(state)
        assert [b["key"] for b in restored] == rest and len(first + rest) == 5


def test_a_tar_cut_after_indexing_gives_counted_skips_and_no_hang(tmp_path, exact_bad):
    folder = tmp_path / "cut"
    shutil.copytree(exact_bad["shards"][0].rsplit("/", 1)[0], folder)
    shard = folder / "000001.tar"
    loader = balanced(f"{folder}/{{000000..000002}}.tar")  # indexed before the cut
    index = read_index(str(shard))
    shard.write_bytes(shard.read_bytes()[:(index.spans[20][0] + index.spans[20][1]) // 2])  # inside sample 20
    lost = set(index.keys[20:])
    with deadline(60):
        keys = epoch_of(loader, exact_bad["labels"])
    totals = loader.totals()
    assert lost.isdisjoint(keys) and len(keys) == 120
    assert set(totals["by_reason"]) == {"bad image", "truncated tar"}
    assert totals["by_reason"]["truncated tar"] >= len(lost) == 30  # refill tries may hit lost ones again
    assert totals["repeats"] == len(lost) + 2  # each planned lost or bad sample replaced once


def test_a_tar_cut_before_indexing_is_reindexed_and_reported(tmp_path, exact_bad, caplog):
    folder = tmp_path / "cut"
    shutil.copytree(exact_bad["shards"][0].rsplit("/", 1)[0], folder)
    shard = folder / "000001.tar"
    index = read_index(str(shard))
    shard.write_bytes(shard.read_bytes()[:(index.spans[20][0] + index.spans[20][1]) // 2])
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        loader = balanced(f"{folder}/{{000000..000002}}.tar")
    assert "indexing it again" in caplog.text
    assert loader.totals()["size_mismatch"] == {str(shard): [50, 21]}  # listed in sizes.json, found in the tar
    with deadline(60):
        keys = epoch_of(loader, exact_bad["labels"])
    assert set(index.keys[20:]).isdisjoint(keys) and len(keys) == len(set(keys)) == loader.num_batches * BATCH
    assert set(loader.totals()["by_reason"]) <= {"bad image"}


def test_a_class_with_nothing_readable_stops_with_its_name(tmp_path):
    samples = per_class_digits(4, classes=4)
    shards = write_labelled(tmp_path, samples, bad_keys={s["__key__"] for s in samples if s["cls"] == 2})
    loader = balanced(shards["pattern"], batch_size=8)
    with pytest.raises(DirtyDataError, match="class 2 has fewer than m=4 readable samples"), deadline(60):
        list(loader)


@pytest.mark.parametrize("options, message", [
    ({"m_per_class": 5}, "m_per_class=5 must divide batch_size=24"),
    ({"m_per_class": -1}, "m_per_class must be a positive int, got -1"),
    ({"task": "image_text"}, "needs task='image_label'"),
    ({"mode": "resampled"}, "needs mode='epoch'"),
    ({"shuffle_buffer": 10}, "shuffle_buffer=10 has no use with m_per_class=4"),
    ({"tokenizer": str.split}, "tokenizer=.* has no use"),
    ({"batch_size": 48}, "needs 12 classes with at least m=4 samples, labels have 10"),
])
def test_bad_arguments_are_refused_by_name(exact_bad, options, message):
    with pytest.raises(ValueError, match=message):
        balanced(exact_bad["pattern"], **options)


def test_shards_without_labels_and_foreign_states_are_refused(tmp_path, exact_bad):
    from dmlscale.data.shards import write_shards

    unlabelled = write_shards([{"__key__": f"k{i}", "txt": "a caption"} for i in range(8)], tmp_path, samples_per_shard=8)
    with pytest.raises(ValueError, match="none of the 8 listed samples of 1 shards has a label"):
        balanced(unlabelled["shards"][0])
    loader = balanced(exact_bad["pattern"])
    plain = make_loader(exact_bad["pattern"], batch_size=BATCH, task="image_label")
    with pytest.raises(ValueError, match="from a state of kind"):
        loader.load_state_dict(plain.state_dict())
    other = balanced(exact_bad["pattern"], batch_size=12)  # global batch 12, not 24
    with pytest.raises(ValueError, match="global_batch_size"):
        loader.load_state_dict(other.state_dict())

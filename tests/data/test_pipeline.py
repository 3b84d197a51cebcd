"""Rank balance and coverage of the WebDataset loader on real, deliberately uneven tar shards.

The shard set (loader_shards.write_uneven_shards) has 403 samples in 12 shards of 64, 64, 64, 64, 44,
23, 23, 23, 23, 8, 0 and 3 samples across three sources, one of them without sizes.json.
"""

from __future__ import annotations

import collections
import itertools

import pytest
import torch

from dmlscale.data.pipeline import make_loader
from tests.data.loader_shards import write_uneven_shards

NUM_SAMPLES = 403
BATCH = 8


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"))


def all_keys(uneven) -> set[str]:
    return set(itertools.chain.from_iterable(uneven["keys"].values()))


def run_epoch(uneven, *, world_size, num_workers, epoch=0, **options):
    """Per rank: (num_batches attribute, list of batches' keys) for one epoch."""
    outcome = []
    for rank in range(world_size):
        loader = make_loader(uneven["pattern"], batch_size=BATCH, rank=rank, world_size=world_size,
                             num_workers=num_workers, seed=3, shuffle_buffer=20, **options)
        loader.set_epoch(epoch)
        batches = []
        for batch in loader:
            assert batch["image"].shape == (BATCH, 3, 16, 16) and batch["image"].dtype == torch.float32
            assert len(batch["text"]) == BATCH
            batches.append(batch["key"])
        outcome.append((loader.num_batches, batches))
    return outcome


def test_one_worker_reads_what_the_main_process_reads_in_the_same_order(uneven):
    # so data.num_workers 0 -> 1 is a speed choice that changes no run (the digit recipes read in the main process)
    assert run_epoch(uneven, world_size=2, num_workers=1) == run_epoch(uneven, world_size=2, num_workers=0)


@pytest.mark.parametrize("num_workers", [0, 2, 4])
def test_every_rank_gets_the_same_batches_and_an_epoch_covers_each_sample_once(uneven, num_workers):
    keys = all_keys(uneven)
    assert len(keys) == NUM_SAMPLES
    for world_size in (1, 2, 3):  # world 3 x 4 workers: 12 slots for 11 non-empty shards
        outcome = run_epoch(uneven, world_size=world_size, num_workers=num_workers)
        expected_batches = NUM_SAMPLES // (world_size * BATCH)  # 50, 25, 16
        assert [len(batches) for _, batches in outcome] == [expected_batches] * world_size
        assert [num_batches for num_batches, _ in outcome] == [expected_batches] * world_size
        ledger = collections.Counter(key for _, batches in outcome for batch in batches for key in batch)
        assert max(ledger.values()) == 1, "a sample came twice in one epoch"
        assert set(ledger) <= keys
        assert len(ledger) == world_size * expected_batches * BATCH
        assert NUM_SAMPLES - len(ledger) < world_size * BATCH  # only the remainder under one global batch


def test_a_new_epoch_reshuffles_and_drops_a_different_remainder(uneven):
    epochs = [run_epoch(uneven, world_size=3, num_workers=0, epoch=epoch) for epoch in (0, 1)]
    orders = [[key for _, batches in outcome for batch in batches for key in batch] for outcome in epochs]
    assert orders[0] != orders[1]
    assert sorted(orders[0]) != sorted(orders[1]), "the same samples were left out in both epochs"
    rank0 = [set(itertools.chain.from_iterable(outcome[0][1])) for outcome in epochs]
    assert len(rank0[0] & rank0[1]) < 0.7 * len(rank0[0]), "rank 0 saw mostly the same samples again"
    again = run_epoch(uneven, world_size=3, num_workers=0, epoch=1)
    assert again == epochs[1], "the same (seed, epoch) must give the same batches"


def _train_like(rank, world_size, pattern):
    """A rank of a real gloo job: one all_reduce per batch, as a trainer's gradient sync would do."""
    import torch.distributed as dist

    loader = make_loader(pattern, batch_size=BATCH, rank=rank, world_size=world_size, num_workers=2, seed=5,
                         shuffle_buffer=10, multiprocessing_context="fork")  # as under torchrun; the
    # test launcher's ranks are spawned, whose default would start each worker as a fresh interpreter
    keys = []
    for batch in loader:
        total = torch.tensor([float(len(batch["key"]))])
        dist.all_reduce(total)  # a rank with an extra batch would wait here forever (60 s timeout)
        assert total.item() == BATCH * world_size
        keys.extend(batch["key"])
    counts = [None] * world_size
    dist.all_gather_object(counts, len(keys) // BATCH)
    return {"keys": keys, "counts": counts}


@pytest.mark.slow  # three spawned ranks: ~10 s on an idle machine, ~30 s on a loaded one
def test_ranks_of_a_real_gloo_job_stay_in_step(uneven):
    from tests.distributed.launch import results, run_world

    outcome = results(run_world(_train_like, 3, uneven["pattern"]))
    assert [o["counts"] for o in outcome] == [[16, 16, 16]] * 3
    ledger = collections.Counter(key for o in outcome for key in o["keys"])
    assert len(ledger) == 3 * 16 * BATCH and max(ledger.values()) == 1


def test_image_label_task_and_tokenizers(uneven):
    from open_clip import get_tokenizer
    from transformers import AutoTokenizer

    from dmlscale.data.sources import digits_samples
    from dmlscale.models.text_tower import minilm_directory

    labels = {s["__key__"]: s["cls"] for s in itertools.islice(digits_samples("train", image_size=16), 300)}
    loader = make_loader(uneven["sources"]["a"], batch_size=BATCH, task="image_label")
    batch = next(iter(loader))
    assert batch["label"].dtype == torch.long
    assert batch["label"].tolist() == [labels[key] for key in batch["key"]]

    captions = {s["__key__"]: s["txt"] for s in itertools.islice(digits_samples("train", image_size=16), 300)}
    open_clip_tokenizer = get_tokenizer("ViT-B-32")
    batch = next(iter(make_loader(uneven["sources"]["a"], batch_size=BATCH, tokenizer=open_clip_tokenizer)))
    assert torch.equal(batch["text"], open_clip_tokenizer([captions[key] for key in batch["key"]]))

    hf_tokenizer = AutoTokenizer.from_pretrained(str(minilm_directory()))
    batch = next(iter(make_loader(uneven["sources"]["a"], batch_size=BATCH, tokenizer=hf_tokenizer, context_length=24)))
    assert batch["text"].shape == batch["attention_mask"].shape == (BATCH, 24)
    first = hf_tokenizer(captions[batch["key"][0]])["input_ids"]
    assert batch["text"][0, :len(first)].tolist() == first and batch["attention_mask"][0].sum() == len(first)


def test_bad_arguments_name_the_value(uneven, tmp_path):
    pattern = uneven["sources"]["a"]
    for options, needle in [({"batch_size": 0}, "batch_size"), ({"batch_size": 8, "rank": 2, "world_size": 2}, "rank"),
                            ({"batch_size": 8, "mode": "forever"}, "'forever'"),
                            ({"batch_size": 8, "task": "video"}, "'video'"),
                            ({"batch_size": 1000}, "fewer than one global batch"),
                            ({"batch_size": 8, "samples_per_epoch": 100}, "resampled")]:
        with pytest.raises(ValueError, match=needle):
            make_loader(pattern, **options)
    with pytest.raises(ValueError, match="does not exist"):
        make_loader(str(tmp_path / "{0..3}.tar"), batch_size=8)
    with pytest.raises(ValueError, match="need mode='resampled'"):
        make_loader([(pattern, 2.0), (uneven["sources"]["b"], 1.0)], batch_size=8)


def test_more_slots_than_shards_and_an_empty_shard(uneven):
    """Source c: one shard of 3 samples and one empty shard, read by 3 ranks x 2 workers = 6 slots."""
    counts, keys = [], []
    for rank in range(3):
        loader = make_loader(uneven["sources"]["c"], batch_size=1, rank=rank, world_size=3, num_workers=2)
        batches = [batch["key"] for batch in loader]
        counts.append(len(batches))
        keys += [key for batch in batches for key in batch]
    assert counts == [1, 1, 1]
    assert sorted(keys) == sorted(uneven["keys"]["c"])


def test_shards_written_by_the_cli_are_read_once_per_epoch(tmp_path):
    import json

    from dmlscale.cli import main

    assert main(["shards", "--source", "digits", "--output", str(tmp_path), "--samples-per-shard", "97",
                 "--image-size", "8"]) == 0
    sizes = json.loads((tmp_path / "train" / "sizes.json").read_text())
    num_samples = sum(sizes.values())
    pattern = str(tmp_path / "train" / f"{{000000..{len(sizes) - 1:06d}}}.tar")
    keys = []
    for rank in range(2):
        loader = make_loader(pattern, batch_size=16, rank=rank, world_size=2, num_workers=2, task="image_label")
        keys += [key for batch in loader for key in batch["key"]]
        assert loader.num_batches == num_samples // 32
    assert len(keys) == len(set(keys)) == num_samples // 32 * 32

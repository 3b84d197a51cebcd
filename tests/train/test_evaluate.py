"""train/evaluate.py on real shards written by the project's writer, one of them cut in half: the samples
scored and skipped are counted by shard, and rank 0 logs one warning naming the shard (the trainer's own
evaluations included), unless the caller reports the counts itself."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from dmlscale.data.shards import write_shards
from dmlscale.data.sources import digits_samples
from dmlscale.models import build_model
from dmlscale.train.build import image_transform
from dmlscale.train.evaluate import EvalCounts, eval_batches, evaluate


@pytest.fixture
def cut_shards(tmp_path):
    samples = [sample for _, sample in zip(range(40), digits_samples("test", image_size=16))]
    summary = write_shards(samples, tmp_path, samples_per_shard=20)
    cut = tmp_path / "000001.tar"
    os.truncate(cut, os.path.getsize(cut) // 2)
    return [str(tmp_path / "000000.tar"), str(cut)]


def test_counts_split_scored_and_skipped_by_shard(cut_shards):
    counts = EvalCounts()
    batches = list(eval_batches(cut_shards, rank=0, world_size=1, batch_size=8, image_transform=image_transform(16),
                                counts=counts))
    assert sum(len(batch["image"]) for batch in batches) == counts.num_scored
    assert 20 < counts.num_scored < 40 and counts.num_scored + counts.num_skipped == 40
    assert dict(counts.skipped_by_shard) == {cut_shards[1]: counts.num_skipped}
    assert dict(counts.skipped_by_reason) == {"truncated tar": counts.num_skipped}


def test_evaluate_reports_the_counts_and_warns_once_naming_the_shard(cut_shards, caplog):
    torch.manual_seed(0)
    model = build_model("embedder", "dml-tiny-vit", embedding_dim=8)
    options = dict(task="image_label", rank=0, world_size=1, batch_size=16, image_transform=image_transform(32))
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        metrics = evaluate(model, cut_shards, **options)
    skipped = metrics["eval/num_skipped"]
    assert metrics["eval/num_samples"] == 40 - skipped and skipped > 0
    assert metrics["_skipped_by_shard"] == {cut_shards[1]: skipped}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [f"evaluation skipped {skipped} unreadable samples (truncated tar: {skipped}) in 1 of 2 "
                        f"shard(s): {cut_shards[1]} ({skipped}); the scores leave them out"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        quiet = evaluate(model, cut_shards, **options, warn_skips=False)
    assert quiet["eval/num_samples"] == metrics["eval/num_samples"] and not caplog.records


def test_evaluate_with_nothing_readable_names_the_shard(cut_shards):
    os.truncate(cut_shards[1], 1000)  # a tar header and part of one image: every listed sample is unreadable
    model = build_model("embedder", "dml-tiny-vit", embedding_dim=8)
    with pytest.raises(ValueError, match=r"evaluation scored no samples: 20 unreadable samples skipped in 1 of 1 "
                                         r"shard\(s\) \['.*000001.tar'\]"):
        evaluate(model, [cut_shards[1]], task="image_label", rank=0, world_size=1, batch_size=4,
                 image_transform=image_transform(32))

"""README "Train on your own images", shortened: PNGs in class subfolders -> `dmlscale shards --source folder
--test-fraction 0.2` -> `dmlscale train` on {root}/train and {root}/test -> `dmlscale eval` -> load_exported."""

from __future__ import annotations

import json

import pytest

from dmlscale.cli import main as cli_main
from tests.data.test_shards_cli import digit_png_folder, read_split

pytestmark = pytest.mark.slow


def test_a_tiny_run_trains_and_evaluates_on_a_split_image_folder(tmp_path, capsys):
    images = digit_png_folder(tmp_path / "my_images", dict.fromkeys(range(10), 30))
    root = tmp_path / "data" / "my_images"
    assert cli_main(["shards", "--source", "folder", "--input", str(images), "--captions", "labels_from_subfolders",
                     "--test-fraction", "0.2", "--output", str(root)]) == 0
    assert "train: 240 samples" in capsys.readouterr().out
    test_keys = {key for key, _, _ in read_split(root / "test")}
    assert len(test_keys) == 60 and test_keys.isdisjoint(key for key, _, _ in read_split(root / "train"))

    run_dir = tmp_path / "runs" / "my-images"
    assert cli_main(["train", "--config", "metric_learning_digits", "data.source=shards", f"data.root={root}",
                     f"run_dir={run_dir}", "train.steps=3", "optim.warmup_steps=1", "data.batch_size=32",
                     "monitor.console=false"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 3 and summary["eval/num_samples"] == 60 and summary["eval/num_skipped"] == 0
    assert 0 < summary["eval/precision_at_1"] <= 1
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(run_dir / "export")]) == 0
    out = capsys.readouterr().out
    assert "scored 60 samples from 1 shard(s)" in out
    assert f"eval/precision_at_1                      {summary['eval/precision_at_1']:.4f}" in out

"""`dmlscale train` on the metric-learning digits recipe with data.m_per_class: the sample ledger shows every
step trained m samples of each of batch_size / m distinct classes, no sample twice in the epoch, with the
labels read back from the tar shards with tarfile."""

from __future__ import annotations

import tarfile
from collections import Counter

import yaml

from dmlscale.train.ledger import check_ledger, read_lines
from dmlscale.train.train_cli import main


def tar_labels(folder) -> dict[str, int]:
    labels = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cls"):
                    labels[member.name.split(".")[0]] = int(tar.extractfile(member).read())
    return labels


def test_metric_learning_recipe_with_class_balanced_batches(tmp_path, digits_root):
    run_dir = tmp_path / "balanced"
    summary = main(["--config", "metric_learning_digits", f"run_dir={run_dir}", f"data.root={digits_root}",
                    "data.m_per_class=4", "data.batch_size=32", "train.steps=5", "train.ledger=true",
                    "optim.warmup_steps=1", "eval.max_samples=64", "monitor.console=false", "monitor.plots=false",
                    "checkpoint.export=false"])
    assert summary["step"] == 5
    labels = tar_labels(digits_root / "train")
    lines = sorted(read_lines(run_dir), key=lambda line: line["step"])
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    for line in lines:
        per_class = Counter(labels[key] for key in line["keys"])
        assert len(per_class) == 32 // 4 and set(per_class.values()) == {4}, (line["step"], per_class)
    assert check_ledger(run_dir).exactly_once
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["m_per_class"] == 4  # recorded, so a resume with another value is refused

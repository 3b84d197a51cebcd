"""Metrics JSONL: one record per call, resume continues the file without repeating a step."""

import json
import math
import time

import pytest
import torch

from dmlscale.monitor import MetricsLog, read_metrics, read_records


def test_records_hold_step_time_and_metrics(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    before = time.time()
    log = MetricsLog(path)
    assert log.log({"loss/total": torch.tensor(0.5), "lr": 1e-3, "sim/pos_mean": math.nan}, step=0)
    assert log.log({"eval/recall@1": 0.75}, step=0)  # eval at the same step: a second line
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 0 and before <= first["time"] <= time.time()
    assert first["metrics"] == {"loss/total": 0.5, "lr": 1e-3, "sim/pos_mean": "nan"}
    assert read_metrics(path) == [{"step": 0, "loss/total": 0.5, "lr": 1e-3, "sim/pos_mean": "nan",
                                   "eval/recall@1": 0.75}]


def test_resume_appends_without_duplicate_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path)
    for step in range(6):  # logged up to step 5; the checkpoint was at step 3
        first.log({"loss": float(step)}, step=step)
    resumed = MetricsLog(path)
    kept = []
    with pytest.warns(UserWarning, match="dropped step") as caught:
        for step in range(4, 9):
            kept.append(resumed.log({"loss": 10.0 + step}, step=step))
    assert kept == [False, False, True, True, True]
    assert len(caught) == 1 and "dropped step 4" in str(caught[0].message) and resumed.num_dropped == 2
    steps = [record["step"] for record in read_records(path)]
    assert steps == list(range(9)) and len(set(steps)) == len(steps)
    assert [row["loss"] for row in read_metrics(path)] == [0, 1, 2, 3, 4, 5, 16, 17, 18]


def test_a_torn_last_line_is_cut_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).log({"loss": 1.0}, step=0)
    with path.open("a") as file:
        file.write('{"step": 1, "time": 0, "metr')  # the process died mid-write
    assert [record["step"] for record in read_records(path)] == [0]
    resumed = MetricsLog(path)
    resumed.log({"loss": 0.5}, step=1)
    assert [record["step"] for record in read_records(path)] == [0, 1]
    path.write_text(path.read_text() + "not json\n" + '{"step": 9, "time": 0, "metrics": {}}\n')
    with pytest.raises(ValueError, match="line 3"):
        read_records(path)


def test_other_ranks_write_nothing_and_bad_steps_raise(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl", rank=1)
    assert log.log({"loss": 1.0}, step=0)
    assert not (tmp_path / "sub").exists()
    with pytest.raises(ValueError, match="-1"):
        log.log({"loss": 1.0}, step=-1)

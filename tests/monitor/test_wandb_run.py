"""Real offline W&B runs: the run's transaction log on disk holds what was logged, a resumed run
(a second process) keeps its id and continues the steps; disabled mode and rank 1 write nothing."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dmlscale.monitor import WandbRun, plot_curves, read_history, run_log_files
from dmlscale.monitor.wandb_records import iter_records, last_logged_step

REPO = Path(__file__).resolve().parents[2]
NO_NETWORK = ["unshare", "--user", "--map-root-user", "--net"]


def _no_network_works() -> bool:
    try:
        return subprocess.run([*NO_NETWORK, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def offline_run(tmp_path, run_id=None, **kwargs):
    return WandbRun("offline", project="dmlscale-tests", run_dir=tmp_path, run_id=run_id,
                    config={"lr": 0.1, "loss": "clip"}, system_metrics=False, **kwargs)


def all_rows(tmp_path, run_id):
    return [row for path in run_log_files(tmp_path / "wandb", run_id) for row in read_history(path)]


def test_offline_run_files_hold_the_logged_metrics_and_config(tmp_path):
    run = offline_run(tmp_path)
    logged = {step: {"loss/total": 1.0 / (step + 1), "lr": 0.1 * step, "perf/samples_per_s_global": 100.0 + step}
              for step in range(4)}
    for step, metrics in logged.items():
        assert run.log(metrics, step=step)
    run.log({"eval/recall@1": 0.25}, step=3)  # same step: merged into step 3's row
    run.finish()
    files = run_log_files(tmp_path / "wandb", run.run_id)
    assert len(files) == 1 and files[0].parent.name.startswith("offline-run-")
    rows = read_history(files[0])
    assert [row["_step"] for row in rows] == [0, 1, 2, 3]
    for row in rows:
        for key, value in logged[row["_step"]].items():
            assert row[key] == pytest.approx(value, rel=1e-12)
    assert rows[3]["eval/recall@1"] == 0.25
    run_records = [record.run for record in iter_records(files[0]) if record.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_records[0].config.update}
    assert run_records[0].run_id == run.run_id
    assert config["lr"] == 0.1 and config["loss"] == "clip"


def test_logged_images_are_in_the_run(tmp_path):
    png = plot_curves([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}], tmp_path / "curves.png")
    run = offline_run(tmp_path)
    assert run.log_images([png], step=5)
    run.finish()
    (row,) = all_rows(tmp_path, run.run_id)
    assert row["_step"] == 5 and row["plots/curves"]["_type"] == "image-file"
    (folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{run.run_id}")
    media = folder / "files" / row["plots/curves"]["path"]
    assert media.read_bytes() == png.read_bytes() and row["plots/curves"]["size"] == png.stat().st_size
    with pytest.raises(ValueError, match="missing.png"):
        WandbRun("disabled", project="p", run_dir=tmp_path).log_images([tmp_path / "missing.png"], step=0)


RESUME_SCRIPT = """
import json, sys, warnings
from dmlscale.monitor import WandbRun
run = WandbRun("offline", project="dmlscale-tests", run_dir=sys.argv[1], run_id=sys.argv[2], config={},
               system_metrics=False)
floor = run.last_step
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kept = [run.log({"loss/total": 10.0 + step}, step=step) for step in range(3, 8)]
run.finish()
print(json.dumps({"id": run.run_id, "floor": floor, "kept": kept, "num_dropped": run.num_dropped,
                  "warnings": [str(w.message) for w in caught]}))
"""


def test_resumed_run_in_a_new_process_keeps_its_id_and_monotonic_steps(tmp_path):
    first = offline_run(tmp_path)
    for step in range(5):  # the first session reached step 4, then "crashed" after a checkpoint at step 2
        first.log({"loss/total": float(step)}, step=step)
    first.finish()
    # where the system allows it the second process has no network at all (an empty network namespace)
    offline_prefix = NO_NETWORK if _no_network_works() else []
    out = subprocess.run([*offline_prefix, sys.executable, "-c", RESUME_SCRIPT, str(tmp_path), first.run_id],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    second = json.loads(out.stdout.strip().splitlines()[-1])
    assert second["id"] == first.run_id and second["floor"] == 4
    assert second["kept"] == [False, False, True, True, True]  # steps 3 and 4 were already logged
    assert second["num_dropped"] == 2  # one warning for the replayed steps, not one per step
    assert len(second["warnings"]) == 1 and "dropped step 3" in second["warnings"][0]
    files = run_log_files(tmp_path / "wandb", first.run_id)
    assert len(files) == 2  # one transaction log per session, same run id
    for path in files:
        ids = {record.run.run_id for record in iter_records(path) if record.WhichOneof("record_type") == "run"}
        assert ids == {first.run_id}
    rows = all_rows(tmp_path, first.run_id)
    assert [row["_step"] for row in rows] == list(range(8))
    assert [row["loss/total"] for row in rows] == [0, 1, 2, 3, 4, 15, 16, 17]
    assert last_logged_step(tmp_path / "wandb", first.run_id) == 7


def test_step_going_back_within_a_session_is_dropped_with_a_warning(tmp_path):
    run = offline_run(tmp_path)
    run.log({"a": 1.0}, step=3)
    with pytest.warns(UserWarning, match="dropped step 2"):
        assert not run.log({"a": 2.0}, step=2)
    assert run.log({"a": 4.0}, step=4) and run.last_step == 4
    run.finish()
    assert [(row["_step"], row["a"]) for row in all_rows(tmp_path, run.run_id)] == [(3, 1.0), (4, 4.0)]
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="step must be an int"):
            run.log({"a": 1.0}, step=bad)


def test_disabled_mode_and_other_ranks_write_nothing(tmp_path):
    disabled = WandbRun("disabled", project="p", run_dir=tmp_path / "disabled", config={"a": 1})
    rank1 = WandbRun("offline", project="p", run_dir=tmp_path / "rank1", run_id=None, rank=1)
    for run in (disabled, rank1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert run.log({"loss": 1.0}, step=0)
        run.finish()
    assert not any(tmp_path.iterdir())
    assert len(disabled.run_id) == 8 and rank1.run_id is None  # rank 0 owns the id


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="'offlin'"):
        WandbRun("offlin", project="p", run_dir=tmp_path)
    with pytest.raises(ValueError, match="'a/b'"):
        WandbRun("disabled", project="p", run_dir=tmp_path, run_id="a/b")
    with pytest.raises(ValueError, match="rank must be"):
        WandbRun("disabled", project="p", run_dir=tmp_path, rank=-1)


def test_resume_in_the_same_process_and_records_spanning_log_blocks(tmp_path):
    first = offline_run(tmp_path)
    wide = {f"layer{index}/grad_norm": index + 0.5 for index in range(3000)}  # one ~100 KB record: 4 blocks
    first.log(wide, step=0)
    first.log({"loss/total": 2.0}, step=1)
    first.finish()
    (path,) = run_log_files(tmp_path / "wandb", first.run_id)
    assert path.stat().st_size > 3 * 32768
    second = offline_run(tmp_path, run_id=first.run_id)
    assert second.last_step == 1
    with pytest.warns(UserWarning, match="dropped step 1"):
        assert not second.log({"loss/total": 9.0}, step=1)
    second.log({"loss/total": 1.0}, step=2)
    second.finish()
    rows = all_rows(tmp_path, first.run_id)
    assert [row["_step"] for row in rows] == [0, 1, 2]
    assert all(rows[0][key] == value for key, value in wide.items())
    assert [row.get("loss/total") for row in rows] == [None, 2.0, 1.0]


def test_history_printer_shows_an_offline_run(tmp_path, capsys):
    from dmlscale.monitor.wandb_records import main

    with offline_run(tmp_path) as run:
        run.log({"loss/total": 0.5}, step=7)
    (path,) = run_log_files(tmp_path / "wandb", run.run_id)
    main([str(path.parent)])
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["_step"] == 7 and row["loss/total"] == 0.5
    with pytest.raises(ValueError, match="no .wandb file"):
        main([str(tmp_path)])

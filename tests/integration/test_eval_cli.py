"""`dmlscale eval` on real tiny runs: it says how many samples it scored, warns naming the shard when
samples are unreadable, and scores exported weights (open_clip CLIP and embedder) exactly like the
checkpoint they came from, also once the export is moved out of its run folder."""

from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

from dmlscale.cli import main as cli_main
from dmlscale.train.train_cli import main as train_main

pytestmark = pytest.mark.slow  # two tiny training runs (about a minute on 2 shared cores)

TINY = ["monitor.console=false", "train.steps=2", "optim.warmup_steps=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    """{"clip": run folder, "embedder": run folder}: two steps each, with export/ and plots/."""
    root = tmp_path_factory.mktemp("eval_runs")
    train_main([f"run_dir={root / 'clip'}", f"data.root={digits_root}", "model.name=dml-tiny-vit",
                "data.batch_size=8", "eval.every=0", "eval.retrieval=false", *TINY])
    train_main(["--config", "metric_learning_digits", f"run_dir={root / 'embedder'}", f"data.root={digits_root}",
                "data.batch_size=32", "monitor.plots=true", *TINY])
    return {"clip": root / "clip", "embedder": root / "embedder"}


def eval_json(tmp_path, capsys, *argv: str) -> tuple[dict, str, str]:
    out = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    assert cli_main(["eval", *argv, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    return json.loads(out.read_text()), captured.out, captured.err


def test_eval_states_the_samples_scored_and_warns_naming_a_truncated_shard(tmp_path, capsys, runs, digits_root):
    test_dir = digits_root / "test"
    listed = json.loads((test_dir / "sizes.json").read_text())
    clean, out, err = eval_json(tmp_path, capsys, "--checkpoint", str(runs["clip"]), "--data", str(test_dir))
    assert clean["eval/num_samples"] == sum(listed.values()) == 450 and clean["eval/num_skipped"] == 0
    assert "dmlscale eval: checkpoint step_00000002 of" in out and "scored 450 samples from 2 shard(s)" in out
    assert "warning" not in err

    damaged = tmp_path / "test"
    shutil.copytree(test_dir, damaged)
    cut = damaged / "000001.tar"
    os.truncate(cut, os.path.getsize(cut) // 2)
    with tarfile.open(cut) as tar:  # what survives, read independently: keys whose members all came through
        kept = set()
        try:
            for member in tar:
                kept.add(member.name.split(".")[0])
        except tarfile.ReadError:
            pass
    report, out, err = eval_json(tmp_path, capsys, "--checkpoint", str(runs["clip"]), "--data", str(damaged))
    skipped = report["eval/num_skipped"]
    assert report["eval/num_samples"] + skipped == 450
    assert listed["000001.tar"] - len(kept) <= skipped <= listed["000001.tar"] - len(kept) + 1  # + the cut one
    assert report["skipped_by_shard"] == {str(cut): skipped} and report["skipped_by_reason"] == {"truncated tar": skipped}
    assert f"scored {450 - skipped} samples from 2 shard(s)" in out
    warnings = [line for line in err.splitlines() if line.startswith("dmlscale eval: warning:")]
    assert warnings == [f"dmlscale eval: warning: skipped {skipped} unreadable samples (truncated tar: {skipped}) in "
                        f"1 of 2 shard(s): {cut} ({skipped}); the scores leave them out"]


@pytest.mark.parametrize("kind", ["clip", "embedder"])
def test_eval_scores_exported_weights_as_the_checkpoint(tmp_path, capsys, runs, kind):
    run_dir = runs[kind]
    from_checkpoint, _, _ = eval_json(tmp_path, capsys, "--checkpoint", str(run_dir))
    from_export, out, _ = eval_json(tmp_path, capsys, "--checkpoint", str(run_dir / "export"))
    assert f"dmlscale eval: exported weights of {run_dir / 'export'}: scored 450 samples" in out
    assert from_export["weights"] == str(run_dir / "export")
    metrics = [key for key in from_checkpoint if key.startswith("eval/") and "/sim/" not in key]
    assert len(metrics) >= 4 and ("eval/zero_shot_top1" in metrics if kind == "clip" else "eval/precision_at_1" in metrics)
    for key in metrics:
        assert from_export[key] == pytest.approx(from_checkpoint[key], abs=1e-6), key

    # `dmlscale export` to a folder outside the run: the export carries the run config and scores alone
    moved = tmp_path / "elsewhere" / "weights"
    assert cli_main(["export", "--checkpoint", str(run_dir), "--output", str(moved)]) == 0
    assert (moved / "run_config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    standalone, _, _ = eval_json(tmp_path, capsys, "--checkpoint", str(moved))
    assert all(standalone[key] == pytest.approx(from_checkpoint[key], abs=1e-6) for key in metrics)

    assert cli_main(["eval", "--checkpoint", str(moved), "--tag", "step_00000002"]) == 2
    assert "--tag 'step_00000002' picks a checkpoint of a run folder" in capsys.readouterr().err
    (moved / "run_config.yaml").unlink()
    assert cli_main(["eval", "--checkpoint", str(moved)]) == 2
    assert "holds exported weights but no run_config.yaml" in capsys.readouterr().err


def test_eval_names_a_folder_that_is_neither_a_run_nor_an_export(tmp_path, capsys):
    assert cli_main(["eval", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dmlscale eval: error: --checkpoint {str(tmp_path)!r} is neither a run folder")


def test_embedder_export_loads_in_python_as_the_readme_shows(runs):
    import torch

    from dmlscale.models import ImageEmbedder, load_exported

    model = load_exported(runs["embedder"] / "export")
    state = torch.load(runs["embedder"] / "export" / "model.bin", weights_only=True)
    assert isinstance(model, ImageEmbedder) and not model.training
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


def test_the_real_metrics_get_lr_grad_norm_and_logit_scale_panels(runs):
    from dmlscale.monitor import curves_figure, read_metrics

    for kind, signals in (("clip", ["Learning rate", "Gradient norm", "Logit scale"]),
                          ("embedder", ["Learning rate", "Gradient norm"])):
        assert (runs[kind] / "plots" / "curves.png").stat().st_size > 10_000
        fig = curves_figure(read_metrics(runs[kind] / "metrics.jsonl"))
        assert [ax.get_title() for ax in fig.axes] == ["Training losses", "Evaluation scores", *signals], kind

"""End to end through `main(argv)`: the quickstart recipe on real digits shards, one and two gloo
processes, and checkpoint/resume under DeepSpeed ZeRO-2 with gradient caching.

The zero-shot accuracy the trainer reports is re-derived here independently: the exported weights are
loaded with open_clip's own `create_model("local-dir:...")`, the held-out images are read from the tar
files with `tarfile` and preprocessed with open_clip's transform, and the classifier is the mean of
the normalised prompt embeddings, computed by hand.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from dmlscale.cli import main as cli_main
from dmlscale.train.train_cli import EXIT_STOPPED, main

# one torch thread per process, as the tests of launchers pin it: the recipes' default (all cores) can be several
# times slower on a machine that also runs other jobs, and the tests check results, not speed
QUICK = ["monitor.console=false", "train.threads=1"]
REPO = Path(__file__).resolve().parents[2]


def run_args(run_dir: Path, digits_root: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.root={digits_root}", *QUICK, *extra]


def tiny_args(run_dir: Path, digits_root: Path, *extra: str) -> list[str]:
    """A few steps of the smallest model: for plumbing, not accuracy."""
    return run_args(run_dir, digits_root, "model.name=dml-tiny-vit", "data.batch_size=8", "train.steps=6",
                    "optim.warmup_steps=2", "eval.every=0", "eval.retrieval=false", "monitor.plots=false", *extra)


def independent_zero_shot_top1(export_dir: Path, test_dir: Path) -> float:
    import open_clip
    from PIL import Image

    from dmlscale.data import DIGIT_CLASSNAMES, HELDOUT_TEMPLATES

    model = open_clip.create_model("local-dir:" + str(export_dir)).eval()
    config = json.loads((export_dir / "open_clip_config.json").read_text())["model_cfg"]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    preprocess = open_clip.image_transform(config["vision_cfg"]["image_size"], is_train=False)
    images, labels = [], []
    for shard in sorted(test_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".jpg")):
            key = name[:-4]
            images.append(preprocess(Image.open(io.BytesIO(members[name])).convert("RGB")))
            labels.append(int(members[key + ".cls"]))
    with torch.no_grad():
        image_ND = torch.nn.functional.normalize(model.encode_image(torch.stack(images)), dim=-1)
        rows = []
        for classname in DIGIT_CLASSNAMES:
            prompts = tokenizer([t.format(classname) for t in HELDOUT_TEMPLATES])
            emb_TD = torch.nn.functional.normalize(model.encode_text(prompts), dim=-1)
            rows.append(torch.nn.functional.normalize(emb_TD.mean(0), dim=0))
        predicted_N = (image_ND @ torch.stack(rows).t()).argmax(1)
    return (predicted_N == torch.tensor(labels)).float().mean().item()


@pytest.mark.slow
def test_quickstart_reaches_95_percent_zero_shot_on_unseen_prompts(tmp_path, digits_root):
    run_dir = tmp_path / "quickstart"
    summary = main(run_args(run_dir, digits_root))  # no --config: the packaged quickstart recipe
    assert summary["step"] == 300 and summary["world_size"] == 1
    assert summary["eval/zero_shot_top1"] >= 0.95, summary

    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest", "plots/curves.png",
                 "plots/similarity.png", "export/open_clip_pytorch_model.bin"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["metrics"]["train/loss"] for r in records if "train/loss" in r["metrics"]]
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]  # logged every 10 steps, and it learned
    last_train = [r["metrics"] for r in records if "train/loss" in r["metrics"]][-1]
    exported = torch.load(run_dir / "export" / "open_clip_pytorch_model.bin", weights_only=True)
    assert last_train["train/logit_scale"] == pytest.approx(exported["logit_scale"].exp().item(), rel=1e-6)
    # trained: a caption is closer to its image than the other captions of the batch / of the eval set
    assert last_train["train/sim/pos_mean"] > last_train["train/sim/neg_mean"] + 0.2
    assert summary["eval/sim/pos_mean"] > summary["eval/sim/neg_mean"] + 0.2
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000300"

    reproduced = independent_zero_shot_top1(run_dir / "export", digits_root / "test")
    assert abs(reproduced - summary["eval/zero_shot_top1"]) < 0.5 / 450, (reproduced, summary)

    # `dmlscale eval` on the run folder gives the trainer's numbers again
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["eval/zero_shot_top1"] == pytest.approx(summary["eval/zero_shot_top1"])


def consolidated(run_dir: Path) -> dict:
    from dmlscale.train.export import consolidated_state_dict

    checkpoint_dir = run_dir / "checkpoints"
    return consolidated_state_dict(checkpoint_dir, (checkpoint_dir / "latest").read_text().strip())


@pytest.mark.slow
def test_resume_under_zero2_equals_uninterrupted_run(tmp_path, digits_root):
    common = ["--nproc", "2"]
    options = ["train.zero_stage=2", "train.grad_cache_chunks=2", "checkpoint.export=false", "eval.zero_shot=false",
               "train.log_every=1"]
    main(common + tiny_args(tmp_path / "straight", digits_root, *options))
    options.append("monitor.wandb=offline")  # the resumed run continues one W&B run
    stopped = main(common + tiny_args(tmp_path / "resumed", digits_root, *options, "train.stop_at=3"))
    assert stopped["stopped"] and stopped["step"] == 3
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    main(common + ["--resume", "latest"] + tiny_args(tmp_path / "resumed", digits_root, *options, "train.stop_at=3"))

    straight, resumed = consolidated(tmp_path / "straight"), consolidated(tmp_path / "resumed")
    initial = torch.load(next((tmp_path / "resumed" / "checkpoints" / "step_00000003").glob("mp_rank_*")),
                         weights_only=False)["module"]
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    moved = [name for name in straight if not torch.equal(straight[name], initial[name].float())]
    assert len(moved) > len(straight) // 2  # steps 4-6 changed the weights: the comparison is not vacuous

    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step once, across the two sessions (no evaluation metrics here)

    from dmlscale.monitor.wandb_records import last_logged_step

    sessions = sorted((tmp_path / "resumed" / "wandb").glob("offline-run-*"))
    run_ids = {session.name.rsplit("-", 1)[1] for session in sessions}
    assert len(sessions) == 2 and len(run_ids) == 1, sessions
    run_id = run_ids.pop()
    assert last_logged_step(tmp_path / "resumed" / "wandb", run_id) == 6
    check_step_metrics(tmp_path / "straight", tmp_path / "resumed", run_id)


STEP_KEYS = ("train/grad_norm", "train/logit_scale", "perf/peak_memory_bytes", "data/skipped_total",
             "train/sim/pos_mean", "train/sim/neg_mean", "train/sim/hardest_neg_mean",
             "train/sim/active_triplet_fraction")


def check_step_metrics(straight_dir: Path, resumed_dir: Path, run_id: str) -> None:
    """ZeRO-2, gradient caching, 2 ranks: the extra metrics are in the JSONL and in the offline W&B run,
    and equal between the straight and the resumed run (same weights, same batches)."""
    import math

    from dmlscale.monitor.wandb_records import read_history, run_log_files

    def by_step(run_dir: Path) -> dict[int, dict]:
        return {r["step"]: r["metrics"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}

    straight, resumed = by_step(straight_dir), by_step(resumed_dir)
    for step, metrics in resumed.items():
        assert all(key in metrics for key in STEP_KEYS), (step, sorted(metrics))
        assert math.isfinite(metrics["train/grad_norm"]) and metrics["train/grad_norm"] > 0
        assert 1.0 <= metrics["train/logit_scale"] <= 100.0 and metrics["data/skipped_total"] == 0
        assert 0.0 <= metrics["train/sim/active_triplet_fraction"] <= 1.0
        for key in ("train/grad_norm", "train/logit_scale", "train/sim/pos_mean", "train/sim/hardest_neg_mean"):
            assert metrics[key] == pytest.approx(straight[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert resumed[6]["train/logit_scale"] == pytest.approx(consolidated(resumed_dir)["logit_scale"].exp().item(),
                                                            rel=1e-6)
    history = {row["_step"]: row for path in run_log_files(resumed_dir / "wandb", run_id) for row in read_history(path)}
    for step, metrics in resumed.items():
        for key in STEP_KEYS:
            assert history[step][key] == pytest.approx(metrics[key], rel=1e-12), (step, key)


def test_bad_override_and_misplaced_nproc_are_reported(tmp_path, monkeypatch, capsys):
    assert cli_main(["train", f"run_dir={tmp_path}", "optim.lr=-1"]) == 2
    assert "optim.lr must be a number > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()  # nothing ran
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli_main(["train", "--nproc", "2", f"run_dir={tmp_path}"]) == 2
    assert "cannot run under torchrun" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("loss", [[],  # the recipe's TripletMarginLoss with BatchHardMiner
                                  ["loss.name=SupConLoss", "loss.options={temperature: 0.07}", "loss.miner=null",
                                   "loss.memory_size=256"]],
                         ids=["triplet+batch_hard", "supcon+cross_batch_memory"])
def test_metric_learning_recipe_learns(tmp_path, digits_root, loss):
    run_dir = tmp_path / "metric"
    summary = main(["--config", "metric_learning_digits", f"run_dir={run_dir}",
                    f"data.root={digits_root}",
                    "train.steps=40", "optim.warmup_steps=5", "train.log_every=5", "data.batch_size=64",
                    "checkpoint.export=false", *QUICK, *loss])
    records = [json.loads(line)["metrics"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert 0.5 < summary["eval/precision_at_1"] <= 1.0 and "eval/mean_average_precision_at_r" in summary

    # `dmlscale eval` rebuilds the embedder from the run folder and scores the same checkpoint identically
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["eval/precision_at_1"] == pytest.approx(summary["eval/precision_at_1"])
    # `dmlscale export` writes the checkpoint's weights as one plain state dict
    assert cli_main(["export", "--checkpoint", str(run_dir), "--output", str(tmp_path / "exported")]) == 0
    exported = torch.load(tmp_path / "exported" / "model.bin", weights_only=True)
    expected = consolidated(run_dir)
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert json.loads((tmp_path / "exported" / "model_spec.json").read_text())["family"] == "embedder"


@pytest.mark.slow
def test_siglip_and_frozen_minilm_tower_train(tmp_path, digits_root):
    from transformers import AutoModel

    from dmlscale.models import minilm_directory

    short = ["train.steps=3", "optim.warmup_steps=1", "data.batch_size=16", "eval.every=0", "monitor.plots=false"]
    main(run_args(tmp_path / "siglip", digits_root, "model.name=dml-tiny-vit", "loss.name=SigLipLoss", *short))
    state = consolidated(tmp_path / "siglip")
    assert state["logit_bias"].shape == (1,) and state["logit_bias"].item() != -10.0  # SigLIP's bias trained
    last = json.loads((tmp_path / "siglip" / "metrics.jsonl").read_text().splitlines()[-2])  # before the eval record
    assert last["step"] == 3 and last["metrics"]["train/logit_bias"] == pytest.approx(state["logit_bias"].item())
    assert last["metrics"]["train/logit_scale"] == pytest.approx(state["logit_scale"].exp().item(), rel=1e-6)

    main(run_args(tmp_path / "minilm", digits_root, "model.name=dml-tiny-vit", "model.text_tower=minilm",
                  "model.freeze_text=true", *short))
    state = consolidated(tmp_path / "minilm")
    pretrained = AutoModel.from_pretrained(minilm_directory(), local_files_only=True).state_dict()
    tower = {k[len("text.transformer."):]: v for k, v in state.items() if k.startswith("text.transformer.")}
    assert tower and all(torch.equal(tower[k], pretrained[k].float()) for k in tower)  # frozen: unchanged
    summary = json.loads((tmp_path / "minilm" / "summary.json").read_text())
    assert 0.0 <= summary["eval/zero_shot_top1"] <= 1.0


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resume_continues_from_it(tmp_path, digits_root):
    run_dir = tmp_path / "preempted"
    options = ["train.steps=5000", "train.log_every=1", "eval.zero_shot=false"]
    command = [sys.executable, "-m", "dmlscale.cli", "train", *tiny_args(run_dir, digits_root, *options)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # what Slurm sends on preemption
    output = process.communicate(timeout=180)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]  # resumable, not finished

    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 3 <= last < 5000
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{last:08d}"
    assert f"stopped after step {last} (SIGTERM received by rank 0)" in output

    summary = main(["--resume", "latest", *tiny_args(run_dir, digits_root, *options, f"train.stop_at={last + 2}")])
    assert summary["stopped"] and summary["step"] == last + 2
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, last + 3))  # no step lost, none repeated

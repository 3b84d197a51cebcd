"""`dmlscale train` with a class-sharded ArcFace head (loss.sharded=true) on 2 real gloo ranks: each rank
trains its block of class weights beside the DeepSpeed engine, checkpoints it in its own extra file,
and a run preempted by SIGTERM to the --nproc parent and resumed ends bitwise equal to the uninterrupted
run, weights, class blocks and Adam moments alike; a resume of the same checkpoint on one rank joins the
two blocks into one."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch

from dmlscale.distributed.sharded_classification import class_block, seeded_columns
from dmlscale.train import checkpoint
from dmlscale.train.train_cli import EXIT_STOPPED, main
from tests.integration.test_faults import metrics_by_step, start_training, wait_for_steps
from tests.integration.test_train_quickstart import consolidated, tiny_args

NUM_CLASSES, EMBED_DIM, SEED, STEPS = 10, 16, 0, 12
SHARDED = ["--config", "metric_learning_digits", "loss.name=ArcFaceLoss", f"loss.options={{num_classes: {NUM_CLASSES}}}",
           "loss.miner=null", "loss.sharded=true", f"model.embed_dim={EMBED_DIM}", "optim.loss_lr=0.05",
           "checkpoint.export=false", "train.log_every=1"]


def saved_blocks(run_dir, tag: str, world_size: int) -> list[dict]:
    return [checkpoint.saved_extra(run_dir / "checkpoints", tag, rank)["loss_parameters"]["W"]
            for rank in range(world_size)]


@pytest.mark.slow
def test_sharded_head_resumes_bitwise_and_reshards_onto_one_rank(tmp_path, digits_root):
    def args(run_dir, *extra):
        return ["--nproc", "2", *SHARDED, *tiny_args(run_dir, digits_root, f"train.steps={STEPS}", *extra)]

    main(args(tmp_path / "straight"))
    process = start_training(args(tmp_path / "resumed"))  # preempted: SIGTERM to the --nproc parent
    wait_for_steps(process, tmp_path / "resumed" / "metrics.jsonl", 3)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]
    stop = max(metrics_by_step(tmp_path / "resumed"))
    assert 3 <= stop < STEPS and f"stopped after step {stop} (SIGTERM" in output
    shutil.copytree(tmp_path / "resumed", tmp_path / "one-rank")
    main(["--resume", "latest", *args(tmp_path / "resumed")])

    final = checkpoint.tag_for_step(STEPS)
    straight, resumed = saved_blocks(tmp_path / "straight", final, 2), saved_blocks(tmp_path / "resumed", final, 2)
    initial = seeded_columns(SEED, EMBED_DIM, 0, NUM_CLASSES)
    for rank, (a, b) in enumerate(zip(straight, resumed)):
        start, end = class_block(NUM_CLASSES, 2, rank)
        assert a["block"] == b["block"] == (start, end)
        for key in ("value", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a[key], b[key]), (rank, key)
        assert a["step"] == b["step"] == float(STEPS)
        assert (a["value"] - initial[:, start:end]).abs().max() > 0.05  # the steps at lr 0.05 moved each block
    model_a, model_b = consolidated(tmp_path / "straight"), consolidated(tmp_path / "resumed")
    assert all(torch.equal(model_a[name], model_b[name]) for name in model_a)

    # the stop checkpoint of 2 ranks, resumed on one: its block is the two saved blocks joined, then trained on
    at_stop = saved_blocks(tmp_path / "one-rank", checkpoint.tag_for_step(stop), 2)
    joined = torch.cat([block["value"] for block in at_stop], dim=1)
    one_rank = tiny_args(tmp_path / "one-rank", digits_root, f"train.steps={STEPS}", "data.batch_size=16",
                         f"train.stop_at={stop + 1}")
    summary = main(["--resume", "latest", *SHARDED, *one_rank])
    assert summary["step"] == stop + 1 and summary["world_size"] == 1
    (one,) = saved_blocks(tmp_path / "one-rank", checkpoint.tag_for_step(stop + 1), 1)
    assert one["block"] == (0, NUM_CLASSES) and one["step"] == float(stop + 1)
    moved = (one["value"] - joined).abs()
    assert 0 < moved.max() < 0.05 * 1.5  # one Adam step of at most ~lr from the joined blocks, not from a new init

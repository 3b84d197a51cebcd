"""benchmarks/e2e_vs_openclip.py's logic that needs no timing: the dmlscale config mapped onto
open_clip_train's flags (read back by open_clip_train's own parser, scheduler and data code), the figures
computed from probe records, and the losses read from an open_clip_train log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import e2e_runs  # noqa: E402
import e2e_scoring  # noqa: E402

STEPS, GLOBAL_BATCH = 40, 128


def matched_config(processes: int, *, workers: int = 0):
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import DEFAULT_CONFIG

    return load_config(DEFAULT_CONFIG, e2e_runs.matched_overrides(
        "data/digits", steps=STEPS, global_batch=GLOBAL_BATCH, processes=processes, threads=1, workers=workers))


def parsed_flags(config, processes: int, pattern: str = "shards/{000000..000013}.tar"):
    from open_clip_train.params import parse_args

    return parse_args(e2e_runs.open_clip_train_flags(config, processes=processes, train_pattern=pattern,
                                                     logs="logs", name="run"))


@pytest.mark.parametrize("processes", [1, 2])
def test_open_clip_train_reads_the_recipe_settings(processes):
    config = matched_config(processes)
    args = parsed_flags(config, processes)
    optim = config.optim
    assert (args.lr, args.wd, args.beta1, args.beta2, args.eps) == (optim.lr, optim.weight_decay, *optim.betas,
                                                                     optim.eps)
    assert (args.warmup, args.grad_clip_norm, args.precision) == (optim.warmup_steps, optim.grad_clip, "fp32")
    assert args.batch_size * processes == GLOBAL_BATCH == config.data.batch_size * processes
    assert args.train_num_samples == STEPS * GLOBAL_BATCH and args.epochs == 1 and args.dataset_resampled
    assert args.model == config.model.name and args.seed == config.seed and args.workers == config.data.num_workers
    assert args.aug_cfg == {"scale": (config.data.crop_scale, 1.0)}
    assert (args.local_loss, args.gather_with_grad) == ((processes > 1),) * 2


def test_open_clip_train_schedule_is_dmlscale_schedule_step_by_step():
    import torch
    from open_clip_train.scheduler import cosine_lr

    from dmlscale.train.schedule import cosine_with_warmup

    config = matched_config(1)
    args = parsed_flags(config, 1)
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    dmlscale_schedule = cosine_with_warmup(ours, warmup_steps=config.optim.warmup_steps, total_steps=STEPS)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    open_clip_schedule = cosine_lr(theirs, args.lr, args.warmup, args.train_num_samples // GLOBAL_BATCH)
    for step in range(STEPS):  # open_clip_train sets the rate before step `step`; LambdaLR holds it during it
        open_clip_schedule(step)
        assert theirs.param_groups[0]["lr"] == pytest.approx(ours.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        ours.step()
        dmlscale_schedule.step()


@pytest.fixture
def open_clip_data():
    """open_clip_train.data through the benchmarks' compat (its pandas placeholder removed afterwards)."""
    had_pandas = "pandas" in sys.modules
    from open_clip_compat import import_open_clip_data

    yield import_open_clip_data()
    if not had_pandas:
        sys.modules.pop("pandas", None)


@pytest.mark.parametrize(("processes", "workers"), [(1, 0), (2, 2)])
def test_open_clip_train_takes_exactly_the_steps(tmp_path, open_clip_data, processes, workers):
    """open_clip_train's own loader for the mapped flags holds train.steps batches per process."""
    import open_clip

    from dmlscale.data.digits import write_digits_shards

    summary = write_digits_shards(tmp_path, samples_per_shard=8, max_samples_per_split=32)["train"]
    pattern = str(tmp_path / "train" / f"{{000000..{len(summary['shards']) - 1:06d}}}.tar")
    args = parsed_flags(matched_config(processes, workers=workers), processes, pattern)
    args.world_size = processes
    info = open_clip_data.get_wds_dataset(args, open_clip.image_transform(32, is_train=True), is_train=True,
                                          tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    assert info.dataloader.num_batches == STEPS


def test_steps_not_shared_evenly_by_open_clip_workers_are_refused():
    with pytest.raises(ValueError, match="train.steps=40 must be a multiple of data.num_workers=3"):
        e2e_runs.open_clip_train_flags(matched_config(1, workers=3), processes=1, train_pattern="x", logs="l",
                                       name="n")


def probe_records(num_steps: int, *, lag: float = 0.25, peaks=(700_000, 900_000)) -> dict[int, list[dict]]:
    """Two ranks stepping every 0.5 s from t=110 (rank 2 `lag` s behind), first forward at t=109.5; a
    loader worker (pid 3) that never steps and a launcher (pid 4) with no records."""
    records = {}
    for pid, delay, peak in ((1, 0.0, peaks[0]), (2, lag, peaks[1])):
        records[pid] = ([{"event": "first_forward", "t": 109.5 + delay}]
                        + [{"event": "step", "t": 110 + 0.5 * i + delay} for i in range(num_steps)]
                        + [{"event": "exit", "t": 200.0, "peak_rss_kib": peak}])
    records[3] = [{"event": "exit", "t": 200.0, "peak_rss_kib": 10_000_000}]
    return records


def test_figures_from_probe_records():
    num_steps, batch = 50, 128
    figures = e2e_runs.summarize_probe(probe_records(num_steps), launched=100.0, exited=150.0, global_batch=batch)
    last_end = 110 + 0.5 * (num_steps - 1) + 0.25
    assert figures["processes"] == 2 and figures["steps"] == num_steps
    assert figures["samples_per_s"] == pytest.approx(num_steps * batch / (last_end - 109.5))
    assert figures["steady_samples_per_s"] == pytest.approx(batch / 0.5)  # one step every 0.5 s after the start
    assert figures["startup_s"] == pytest.approx(9.5) and figures["teardown_s"] == pytest.approx(150 - last_end)
    assert figures["peak_rss_mib"] == pytest.approx(900_000 / 1024)  # the worker's larger peak is not a rank's


def test_probe_records_that_cannot_be_timed_are_errors():
    uneven = probe_records(10)
    uneven[2] = [r for r in uneven[2] if r["t"] != 110.25]  # rank 2 lost its first step
    with pytest.raises(RuntimeError, match="different numbers of steps"):
        e2e_runs.summarize_probe(uneven, launched=100.0, exited=150.0, global_batch=8)
    with pytest.raises(RuntimeError, match="no process of the run recorded an optimizer step"):
        e2e_runs.summarize_probe({3: []}, launched=100.0, exited=150.0, global_batch=8)
    with pytest.raises(RuntimeError, match="1 steps leave no steady state"):
        e2e_runs.summarize_probe(probe_records(1), launched=100.0, exited=150.0, global_batch=8)


def test_losses_read_from_an_open_clip_train_log():
    """The total loss of each step, not the per-term loss (distinct here, as with a distillation term)."""
    log = ("2026-12-07,21:24:17 | INFO | Train Epoch: 0 [ 128/1280 (10%)] Data (t): 0.265 Batch (t): 0.528, "
           "242.353/s, 242.353/s/gpu LR: 0.000667 Logit Scale: 14.286 Contrastive_loss: 5.5387 (5.5387) "
           "Distill_loss: 1.0000 (1.0000) Loss: 6.5387 (6.5387)\n"
           "2026-12-07,21:24:17 | INFO | Train Epoch: 0 [ 256/1280 (20%)] Data (t): 0.127 Batch (t): 0.302, "
           "423.798/s, 423.798/s/gpu LR: 0.001333 Logit Scale: 14.276 Contrastive_loss: 6.0058 (5.7722) "
           "Distill_loss: 0.5000 (0.7500) Loss: 6.5058 (6.5222)\n")
    assert e2e_scoring.open_clip_train_losses(log) == [6.5387, 6.5058]

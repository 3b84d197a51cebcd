"""The training loop: one trainer for CLIP/SigLIP and labelled metric learning, chosen by config.

    config -> ranks -> shards -> model + tokenizer -> loader -> distributed loss -> DeepSpeed engine
    -> [resume] -> steps (gradient caching when train.grad_cache_chunks > 1) with periodic eval and
    checkpoints -> final eval, checkpoint, exported weights, plots

The run folder (config.run_dir) holds config.yaml, metrics.jsonl, checkpoints/ (DeepSpeed, with a
`latest` pointer), export/ (consolidated fp32 weights open_clip loads), plots/, wandb/, summary.json,
ledger/ (train.ledger) and .dmlscale.lock while a session owns it. `main(argv)` takes the command line of
`dmlscale train`.

Faults (see README "Fault tolerance"): the folder lock and the resume decision come before any write
(session.py); a restarted worker (torchrun's TORCHELASTIC_RESTART_COUNT > 0) resumes from the newest
complete checkpoint by itself; a NaN/Inf anywhere skips the update on every rank (nonfinite.py); bad
data is limited over the whole run (data_accounting.py); a signal to any rank stops every rank after
the same step with a checkpoint (stop_signal.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from dmlscale.distributed import StepHeartbeat, init_process_group, world_info_from_env
from dmlscale.distributed.collectives import all_gather_objects, barrier
from dmlscale.distributed.env import WorldInfo, threads_per_rank
from dmlscale.monitor import (MetricsLog, Progress, StepTimer, peak_memory_bytes, plot_curves,
                              plot_similarity_histograms, read_metrics, run_title)
from dmlscale.monitor.wandb_run import WandbRun
from dmlscale.train import build, checkpoint
from dmlscale.train.config import Config, save_config
from dmlscale.train.data_accounting import GlobalDataAccounting
from dmlscale.train.engine import engine_contrastive_step
from dmlscale.train.evaluate import evaluate
from dmlscale.train.export import export_weights
from dmlscale.train.ledger import Ledger
from dmlscale.train.loss_parameters import LossParameters
from dmlscale.train.nonfinite import NonFiniteGuard
from dmlscale.train.session import CHECKPOINTS, lock_run_folder, plan_resume
from dmlscale.train.step_metrics import (GradNormProbe, StepRecorder, logit_metrics, output_similarity_metrics,
                                         skipped_metrics)
from dmlscale.train.stop_signal import StopSignal


def _device(config: Config, local_rank: int) -> torch.device:
    use_cuda = config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is visible")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


class Run:
    """Everything one rank needs during training, built from a Config: first the process group (cheap,
    nothing written), then `build()` once the session owns the run folder."""

    def __init__(self, config: Config, info: WorldInfo):
        self.config, self.info = config, info
        threads = config.train.threads or threads_per_rank(info.local_world_size)
        torch.set_num_threads(threads)
        init_process_group(info, timeout_s=config.train.group_timeout_s)
        self.rank, self.world_size = info.rank, info.world_size
        self.device = _device(config, info.local_rank)
        self.run_dir = Path(config.run_dir)
        self.heartbeat = StepHeartbeat.for_current_group()  # None for one process

    def build(self) -> None:
        config = self.config
        build.prepare_shards(config.data, rank=self.rank, barrier=barrier)
        torch.manual_seed(config.seed)  # same initial weights on every rank
        self.model = build.build_run_model(config)
        self.task = config.data.task
        self.tokenizer, self.context_length = (None, 0) if self.task == "image_label" else \
            build.tokenizer_for(self.model, context_length=config.model.context_length)
        self.transform = build.image_transform(config.data.image_size)
        train_transform = build.image_transform(config.data.image_size, crop_scale=config.data.crop_scale)
        self.loader = build.make_train_loader(config, self.rank, self.world_size, train_transform, self.tokenizer,
                                              self.context_length)
        embedding_size = getattr(self.model, "embedding_dim", None)
        self.loss_fn = build.build_loss(config.loss, embedding_size=embedding_size, seed=config.seed).to(self.device)
        optim = config.optim
        self.loss_params = LossParameters(self.loss_fn, lr=optim.loss_lr or optim.lr, betas=optim.betas, eps=optim.eps,
                                          weight_decay=optim.loss_weight_decay, grad_clip=optim.grad_clip,
                                          world_size=self.world_size)
        self.schedule_factor = 1.0
        self.chunks = config.train.grad_cache_chunks
        self.engine = build.build_run_engine(config, self.model, self.device, local_rank=self.info.local_rank)
        self.recorder, self.grad_norm = StepRecorder(), GradNormProbe(self.engine)
        self.guard = NonFiniteGuard(self.engine, self.engine.dmlscale_base_optimizer, rank=self.rank,
                                    world_size=self.world_size, max_in_a_row=config.train.max_nonfinite_steps,
                                    device=self.device, extra_params=self.loss_params.parameters)

    def forward_fn(self, chunk: dict) -> dict:
        if self.task == "image_label":
            return {"embeddings": self.engine(chunk["image"])}
        return self.engine(image=chunk["image"], text=chunk["text"])

    def train_step(self, batch: dict, *, keep_outputs: bool = False) -> float:
        """One optimizer step on this rank's batch (split into gradient-caching chunks); the global loss.
        `keep_outputs`: keep the embeddings the loss saw, for `step_metrics`."""
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        size = len(batch["image"]) // self.chunks
        keys = ("image", "label") if self.task == "image_label" else ("image", "text")
        chunks = [{k: batch[k][i * size:(i + 1) * size] for k in keys} for i in range(self.chunks)]
        if self.task == "image_label":
            loss_fn = lambda out: self.loss_fn(out["embeddings"], batch["label"])  # noqa: E731
        else:
            loss_fn = lambda out: self.loss_fn(out["image_features"], out["text_features"],  # noqa: E731
                                               out["logit_scale"], out.get("logit_bias"))
        self.labels = batch.get("label")
        self.schedule_factor = self.engine.get_lr()[0] / self.config.optim.lr  # this step's, before the engine steps
        loss_fn = self.guard.wrap_loss(self.recorder.wrap(loss_fn, keep_outputs=keep_outputs))
        return float(engine_contrastive_step(self.engine, chunks, self.forward_fn, loss_fn,
                                             before_update=self.guard.before_update))

    def step_metrics(self) -> dict:
        """Everything logged beside loss and timing at a log step (collective: every rank calls it)."""
        out = {**self.recorder.pop_terms(), **logit_metrics(self.engine.module),
               "train/grad_norm": self.grad_norm.value(), **skipped_metrics(self.loader.skipped),
               "train/skipped_nonfinite": self.guard.num_skipped,
               "train/loss_params_grad_norm": self.loss_params.last_grad_norm,
               "perf/peak_memory_bytes": peak_memory_bytes(self.device)}
        if self.recorder.outputs is not None:
            out.update(output_similarity_metrics(self.recorder.outputs, self.labels))
            self.recorder.outputs = None
        return {k: v for k, v in out.items() if v is not None}

    def evaluate(self, *, similarity_samples: bool = False) -> dict:
        """The eval metrics; {} without reading the eval set when the config asks for none."""
        config = self.config
        if not (config.eval.retrieval or build.zero_shot_classnames(config) or similarity_samples):
            return {}
        module = self.engine.module
        tokenize = None if self.tokenizer is None else build.tokenize_fn(self.tokenizer, self.context_length)
        return evaluate(module, build.split_shards(config.data, "test"), task=self.task, rank=self.rank,
                        world_size=self.world_size, batch_size=config.data.eval_batch_size,
                        image_transform=self.transform, tokenize=tokenize,
                        classnames=build.zero_shot_classnames(config), templates=build.zero_shot_templates(config),
                        retrieval=config.eval.retrieval, max_samples=config.eval.max_samples, device=self.device,
                        similarity_samples=similarity_samples, progress=config.monitor.console)


def _inject_nan(config: Config, batch: dict, step: int, rank: int) -> None:
    """faults.nan_steps: one NaN pixel in this rank's batch (a real non-finite input, for drills and tests)."""
    if step in config.faults.nan_steps and rank == config.faults.nan_rank:
        batch["image"] = batch["image"].clone()
        batch["image"].view(-1)[0] = float("nan")


def _apply_schedule_changes(engine, config: Config) -> None:
    """After loading a checkpoint: the new peak learning rate and schedule length from the current step on
    (DeepSpeed restored the saved base rate; the schedule's lambda is already the new config's)."""
    scheduler = engine.lr_scheduler
    scheduler.base_lrs = [config.optim.lr for _ in scheduler.base_lrs]
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
        group["initial_lr"] = base
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class StalledRankError(RuntimeError):
    """A collective timed out; the message names the ranks that stopped beating."""


@contextlib.contextmanager
def _naming_stalled_ranks(heartbeat):
    """Re-raise a collective's timeout with the ranks whose heartbeat fell behind."""
    try:
        yield
    except (RuntimeError, torch.distributed.DistError) as error:
        if heartbeat is None or "imeout" not in str(error) and "imed out" not in str(error):
            raise
        raise StalledRankError(f"{heartbeat.stalled_ranks_message()} ({error})") from error


def train(config: Config) -> dict:
    """Run (or resume) the training described by `config`; returns the final metrics on every rank."""
    started = time.perf_counter()
    info = world_info_from_env()
    requested = config.checkpoint.resume
    if requested is None and info.restart_count > 0:
        requested = checkpoint.LATEST  # a worker restarted by torchrun continues the run
    run = Run(config, info)
    lock = lock_run_folder(run.run_dir, rank=run.rank, job_id=info.job_id)
    try:
        plan = plan_resume(config, requested, world_size=run.world_size)  # may refuse: nothing written yet
        return _train_session(config, run, plan, started)
    finally:
        if lock is not None:
            lock.release()


def _train_session(config: Config, run: Run, plan, started: float) -> dict:
    """The session once it owns the run folder and its resume was accepted."""
    checkpoint_dir = run.run_dir / CHECKPOINTS
    summary_path = run.run_dir / "summary.json"
    if plan.tag is not None and plan.step >= config.train.steps:  # nothing to train: nothing is rewritten
        if run.rank == 0:
            print(f"dmlscale train: run {run.run_dir} already finished at step {plan.step} of {config.train.steps}; "
                  f"nothing to do (raise train.steps to continue, e.g. --resume latest "
                  f"train.steps={2 * plan.step})")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return {**summary, "step": plan.step, "world_size": run.world_size, "already_finished": True}
    if run.rank == 0:
        if plan.tag is None and (run.run_dir / "metrics.jsonl").exists():
            print(f"dmlscale train: starting afresh in {run.run_dir} (no checkpoint in it); its old metrics.jsonl "
                  f"is replaced")
            (run.run_dir / "metrics.jsonl").unlink()
        save_config(config, run.run_dir / "config.yaml")
    run.build()
    step, extra = 0, {}
    if plan.tag is not None:
        relayout = bool(plan.changes and plan.changes.relayout)
        state = checkpoint.load(run.engine, checkpoint_dir, tag=plan.tag, allow_world_size_change=relayout)
        step, extra = state["step"], state["extra"]
        run.loss_params.load_state_dict(
            extra.get("loss_parameters"), saved_world_size=state["world_size"],
            saved_state_of_rank=lambda r: checkpoint.saved_extra(checkpoint_dir, state["tag"], r).get("loss_parameters"))
        run.loader.load_state_dict(extra["data"])
        run.guard.num_skipped = extra.get("nonfinite_skipped", 0)
        if plan.changes is not None and plan.changes.applied:
            _apply_schedule_changes(run.engine, config)
        if run.rank == 0:
            print(f"dmlscale train: resuming {run.run_dir} from checkpoint {plan.tag} (step {step})")
            for line in plan.changes.describe() if plan.changes else []:
                print(f"dmlscale train: resume: {line}")
    accounting = GlobalDataAccounting(run.loader, config.data, rank=run.rank, earlier=extra.get("data_totals"))
    wandb = WandbRun(config.monitor.wandb, project=config.monitor.project, run_dir=run.run_dir,
                     run_id=extra.get("wandb_run_id"), config=config.to_dict(), rank=run.rank,
                     system_metrics=False, name=config.name)
    metrics_log = MetricsLog(run.run_dir / "metrics.jsonl", rank=run.rank,
                             resume_step=step if plan.tag is not None else None)
    ledger = None
    if config.train.ledger:
        ledger = Ledger(run.run_dir, rank=run.rank, session=all_gather_objects(time.time())[0])

    def log(metrics: dict, at: int) -> None:
        public = {k: v for k, v in metrics.items() if not k.startswith("_")}
        if not public:
            return
        metrics_log.log(public, at)
        wandb.log(public, at)

    def save(at: int) -> None:
        checkpoint.save(run.engine, checkpoint_dir, at,
                        {"data": run.loader.state_dict(), "wandb_run_id": wandb.run_id, "config": config.to_dict(),
                         "data_totals": accounting.global_totals(), "nonfinite_skipped": run.guard.num_skipped,
                         "loss_parameters": run.loss_params.state_dict()},
                        run_id=wandb.run_id or "", keep_last=config.checkpoint.keep_last,
                        keep_every=config.checkpoint.keep_every)

    timer, total = StepTimer(), config.train.steps
    losses: list[float] = []
    stop_cause = None
    with Progress(total, desc="train", unit="step", rank=run.rank, initial=min(step, total),
                  enabled=config.monitor.console) as bar, StopSignal(run.device) as stop_signal, \
            _naming_stalled_ranks(run.heartbeat):
        while step < total and stop_cause is None:
            for batch in run.loader:
                timer.data_done()
                if run.heartbeat is not None:
                    run.heartbeat.beat(step + 1)
                logging = (step + 1) % config.train.log_every == 0 or step + 1 == total
                _inject_nan(config, batch, step + 1, run.rank)
                loss = run.train_step(batch, keep_outputs=logging)
                skipped = run.guard.after_update(step + 1)
                run.loss_params.step(schedule_factor=run.schedule_factor, skip=skipped)
                if not skipped:
                    losses.append(loss)
                if ledger is not None:
                    ledger.record(step + 1, run.loader.epoch, batch["key"], applied=not skipped)
                timer.step_done(len(batch["image"]))
                step += 1
                bar.update(1, loss=f"{loss:.3f}")
                request, summed = stop_signal.exchange(accounting.local_counts())
                accounting.check(summed)
                if logging:
                    lr = run.engine.get_lr()[0]
                    train_loss = sum(losses) / len(losses) if losses else float("nan")
                    log({"train/loss": train_loss, "train/lr": lr, "data/repeats_total": summed[2],
                         **timer.summary(global_samples=timer.num_samples * run.world_size), **run.step_metrics()},
                        step)
                    losses.clear()
                    timer.reset()
                if config.eval.every and step % config.eval.every == 0 and step < total:
                    log(run.evaluate(), step)
                    timer.reset()
                if config.checkpoint.every and step % config.checkpoint.every == 0 and step < total:
                    save(step)
                if step < total and request is not None:
                    stop_cause = request.describe()
                elif step < total and step == config.train.stop_at:
                    stop_cause = f"train.stop_at={config.train.stop_at}"
                if step >= total or stop_cause is not None:
                    break
    if ledger is not None:
        ledger.close()
    if stop_cause is not None:  # a signal (preemption) or stop_at: checkpoint this step for the resume
        save(step)
        wandb.finish()
        return {"step": step, "world_size": run.world_size, "stopped": True, "cause": stop_cause,
                "seconds": time.perf_counter() - started}
    final = run.evaluate(similarity_samples=config.monitor.plots)
    log(final, total)
    save(total)
    if config.checkpoint.export and run.rank == 0:
        export_weights(checkpoint_dir, run.run_dir / "export")
    if run.rank == 0 and config.monitor.plots:
        plots = [plot_curves(read_metrics(run.run_dir / "metrics.jsonl"), run.run_dir / "plots" / "curves.png",
                             title=run_title(config.name, run.run_dir))]
        if "_pos" in final:
            plots.append(plot_similarity_histograms(final["_pos"], final["_neg"],
                                                    run.run_dir / "plots" / "similarity.png", step=total))
        wandb.log_images(plots, total)
    wandb.finish()
    summary = {k: v for k, v in final.items() if not k.startswith("_")}
    summary.update({"step": total, "world_size": run.world_size, "seconds": time.perf_counter() - started,
                    "skipped_nonfinite": run.guard.num_skipped})
    if run.rank == 0:
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    barrier()
    return summary


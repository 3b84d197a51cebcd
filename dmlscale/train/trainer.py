"""The training loop: one trainer for CLIP/SigLIP and labelled metric learning, chosen by config.

    config -> ranks -> shards -> model + tokenizer -> loader -> distributed loss -> DeepSpeed engine
    -> [resume] -> steps (gradient caching when train.grad_cache_chunks > 1) with periodic eval and
    checkpoints -> final eval, checkpoint, exported weights, plots

The run folder (config.run_dir) holds config.yaml, metrics.jsonl, checkpoints/ (DeepSpeed, with a
`latest` pointer), export/ (consolidated fp32 weights open_clip loads), plots/, wandb/ and summary.json.
`main(argv)` takes the command line of `dmlscale train`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dmlscale.train import build
from dmlscale.train.config import Config, save_config
from dmlscale.train.step_metrics import (GradNormProbe, StepRecorder, logit_metrics, output_similarity_metrics,
                                         skipped_metrics)
from dmlscale.train.stop_signal import StopSignal


def _device(config: Config, local_rank: int) -> torch.device:
    use_cuda = config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is visible")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Run:
    """Everything one rank needs during training, built from a Config."""

    def __init__(self, config: Config):
        from dmlscale.distributed import init_process_group, world_info_from_env

        self.config, self.info = config, world_info_from_env()
        threads = config.train.threads or max(1, (os.cpu_count() or 1) // self.info.local_world_size)
        torch.set_num_threads(threads)
        init_process_group(self.info)
        self.rank, self.world_size = self.info.rank, self.info.world_size
        self.device = _device(config, self.info.local_rank)
        self.run_dir = Path(config.run_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        build.prepare_shards(config.data, rank=self.rank, barrier=_barrier)

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
        self.loss_fn = build.build_loss(config.loss, embedding_size=embedding_size)
        self.chunks = config.train.grad_cache_chunks
        self.engine = build.build_run_engine(config, self.model, self.device, local_rank=self.info.local_rank)
        self.recorder, self.grad_norm = StepRecorder(), GradNormProbe(self.engine)

    def forward_fn(self, chunk: dict) -> dict:
        if self.task == "image_label":
            return {"embeddings": self.engine(chunk["image"])}
        return self.engine(image=chunk["image"], text=chunk["text"])

    def train_step(self, batch: dict, *, keep_outputs: bool = False) -> float:
        """One optimizer step on this rank's batch (split into gradient-caching chunks); the global loss.
        `keep_outputs`: keep the embeddings the loss saw, for `step_metrics`."""
        from dmlscale.train.engine import engine_contrastive_step

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
        loss_fn = self.recorder.wrap(loss_fn, keep_outputs=keep_outputs)
        return float(engine_contrastive_step(self.engine, chunks, self.forward_fn, loss_fn))

    def step_metrics(self) -> dict:
        """Everything logged beside loss and timing at a log step (collective: every rank calls it)."""
        from dmlscale.monitor import peak_memory_bytes

        out = {**self.recorder.pop_terms(), **logit_metrics(self.engine.module),
               "train/grad_norm": self.grad_norm.value(), **skipped_metrics(self.loader.skipped),
               "perf/peak_memory_bytes": peak_memory_bytes(self.device)}
        if self.recorder.outputs is not None:
            out.update(output_similarity_metrics(self.recorder.outputs, self.labels))
            self.recorder.outputs = None
        return {k: v for k, v in out.items() if v is not None}

    def evaluate(self, *, similarity_samples: bool = False) -> dict:
        from dmlscale.train.evaluate import evaluate

        config = self.config
        module = self.engine.module
        tokenize = None if self.tokenizer is None else build.tokenize_fn(self.tokenizer, self.context_length)
        return evaluate(module, build.split_shards(config.data, "test"), task=self.task, rank=self.rank,
                        world_size=self.world_size, batch_size=config.data.eval_batch_size,
                        image_transform=self.transform, tokenize=tokenize,
                        classnames=build.zero_shot_classnames(config), templates=build.zero_shot_templates(config),
                        retrieval=config.eval.retrieval, max_samples=config.eval.max_samples, device=self.device,
                        similarity_samples=similarity_samples, progress=config.monitor.console)


def train(config: Config) -> dict:
    """Run (or resume) the training described by `config`; returns the final metrics on every rank."""
    from dmlscale.monitor import MetricsLog, Progress, StepTimer, plot_curves, plot_similarity_histograms, read_metrics
    from dmlscale.monitor.wandb_run import WandbRun
    from dmlscale.train import checkpoint

    started = time.perf_counter()
    run = Run(config)
    checkpoint_dir = run.run_dir / "checkpoints"
    step, extra = 0, {}
    resume = config.checkpoint.resume
    if resume == checkpoint.LATEST and not (checkpoint_dir / checkpoint.LATEST).is_file():
        resume = None  # nothing saved yet (a first start under Slurm's --resume latest): start fresh
    if resume is not None:
        state = checkpoint.load(run.engine, checkpoint_dir, tag=resume)
        step, extra = state["step"], state["extra"]
        run.loader.load_state_dict(extra["data"])
    elif run.rank == 0 and (run.run_dir / "metrics.jsonl").exists():
        print(f"dmlscale train: starting afresh in {run.run_dir}; its old metrics.jsonl is replaced "
              f"(--resume latest continues a run instead)")
        (run.run_dir / "metrics.jsonl").unlink()
    wandb = WandbRun(config.monitor.wandb, project=config.monitor.project, run_dir=run.run_dir,
                     run_id=extra.get("wandb_run_id"), config=config.to_dict(), rank=run.rank,
                     system_metrics=False, name=config.name)
    metrics_log = MetricsLog(run.run_dir / "metrics.jsonl", rank=run.rank)

    def log(metrics: dict, at: int) -> None:
        public = {k: v for k, v in metrics.items() if not k.startswith("_")}
        if not public:
            return
        metrics_log.log(public, at)
        wandb.log(public, at)

    def save(at: int) -> None:
        checkpoint.save(run.engine, checkpoint_dir, at, {"data": run.loader.state_dict(),
                                                         "wandb_run_id": wandb.run_id}, run_id=wandb.run_id or "")

    timer, total = StepTimer(), config.train.steps
    losses: list[float] = []
    stopping = False
    with Progress(total, desc="train", unit="step", rank=run.rank, initial=min(step, total),
                  enabled=config.monitor.console) as bar, StopSignal(run.device) as stop_signal:
        while step < total and not stopping:
            for batch in run.loader:
                timer.data_done()
                logging = (step + 1) % config.train.log_every == 0 or step + 1 == total
                losses.append(run.train_step(batch, keep_outputs=logging))
                timer.step_done(len(batch["image"]))
                step += 1
                bar.update(1, loss=f"{losses[-1]:.3f}")
                if logging:
                    lr = run.engine.get_lr()[0]
                    log({"train/loss": sum(losses) / len(losses), "train/lr": lr,
                         **timer.summary(global_samples=timer.num_samples * run.world_size), **run.step_metrics()},
                        step)
                    losses.clear()
                    timer.reset()
                if config.eval.every and step % config.eval.every == 0 and step < total:
                    log(run.evaluate(), step)
                    timer.reset()
                if config.checkpoint.every and step % config.checkpoint.every == 0 and step < total:
                    save(step)
                stopping = step < total and (step == config.train.stop_at or stop_signal.requested())
                if step >= total or stopping:
                    break
    if stopping:  # stop_at reached, or a signal (preemption): checkpoint this step for --resume latest
        save(step)
        wandb.finish()
        return {"step": step, "world_size": run.world_size, "stopped": True,
                "signal": stop_signal.received, "seconds": time.perf_counter() - started}
    final = run.evaluate(similarity_samples=config.monitor.plots)
    log(final, total)
    save(total)
    if config.checkpoint.export and run.rank == 0:
        from dmlscale.train.export import export_weights

        export_weights(checkpoint_dir, run.run_dir / "export")
    if run.rank == 0 and config.monitor.plots:
        plots = [plot_curves(read_metrics(run.run_dir / "metrics.jsonl"), run.run_dir / "plots" / "curves.png")]
        if "_pos" in final:
            plots.append(plot_similarity_histograms(final["_pos"], final["_neg"],
                                                    run.run_dir / "plots" / "similarity.png", step=total))
        wandb.log_images(plots, total)
    wandb.finish()
    summary = {k: v for k, v in final.items() if not k.startswith("_")}
    summary.update({"step": total, "world_size": run.world_size, "seconds": time.perf_counter() - started})
    if run.rank == 0:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _barrier()
    return summary


def main(argv: list[str] | None = None) -> dict:
    """`dmlscale train` without the `train`: [--config FILE] [--resume TAG] [--nproc N] [key=value ...]."""
    import argparse

    from dmlscale.train import train_cli

    parser = argparse.ArgumentParser(prog="dmlscale train")
    train_cli.add_arguments(parser)
    return train_cli.main_from_args(parser.parse_args(argv))

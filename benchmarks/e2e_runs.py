"""The two trainers of e2e_vs_openclip.py as commands, and what one run of either measures.

Both commands come from one dmlscale Config: `dmlscale train` gets it as overrides of the quickstart
recipe, open_clip_train gets it mapped onto its flags (open_clip_train_flags). Each run starts under the
step probe (e2e_probe/sitecustomize.py), so the timestamps and peak memory of both are read the same way;
`summarize_probe` turns them into the figures of the table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
PROBE = BENCHMARKS / "e2e_probe"
ENTRY = BENCHMARKS / "open_clip_train_entry.py"
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "SLURM_PROCID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")
STEADY_SKIP = 0.1  # steady state leaves out this share of the first steps
RUN_TIMEOUT_S = 3600


def matched_overrides(root: str, *, steps: int, global_batch: int, processes: int, threads: int,
                      workers: int) -> list[str]:
    """The quickstart recipe as the matched run trains it: `processes` ranks of global_batch / processes,
    fp32, `threads` per rank, open_clip_train's training crop (RandomResizedCrop of scale (0.9, 1)), no
    evaluation or plots inside the run (one evaluator scores both models afterwards)."""
    if global_batch % processes:
        raise ValueError(f"global batch {global_batch} is not divisible by {processes} processes")
    from dmlscale.train.train_cli import DEFAULT_CONFIG
    from dmlscale.train.config import load_config

    warmup = load_config(DEFAULT_CONFIG).optim.warmup_steps
    if warmup > steps:  # a shortened run (--quick) keeps a warmup of a tenth of its steps
        warmup = max(1, steps // 10)
    return [f"data.root={root}", f"train.steps={steps}", f"data.batch_size={global_batch // processes}",
            f"train.threads={threads}", f"data.num_workers={workers}", "train.precision=fp32",
            f"optim.warmup_steps={warmup}", "data.crop_scale=0.9", "eval.every=0", "eval.zero_shot=false",
            "eval.retrieval=false", "monitor.plots=false", "checkpoint.every=0"]


def open_clip_train_flags(config, *, processes: int, train_pattern: str, logs: str, name: str) -> list[str]:
    """open_clip_train's flags for the run `config` (a dmlscale Config) describes: same model, per-process
    and global batch, steps, AdamW settings, warmup + cosine schedule, gradient clipping, precision,
    crop, loader workers and seed. One epoch of steps x global batch samples drawn with
    --dataset-resampled, so that open_clip_train takes exactly train.steps steps (without it an epoch
    ends where the shards of a worker run out); 2+ processes use the sharded loss with gradient-keeping
    gathers (--local-loss --gather-with-grad), the contrastive loss dmlscale computes."""
    optim, data, train = config.optim, config.data, config.train
    if optim.min_lr_ratio != 0:
        raise ValueError(f"optim.min_lr_ratio={optim.min_lr_ratio}: open_clip_train's cosine ends at 0")
    if train.precision != "fp32":  # dmlscale's bf16 (DeepSpeed, fp32 master weights) has no open_clip twin
        raise ValueError(f"train.precision={train.precision!r}: the matched runs train in fp32")
    if train.steps % max(1, data.num_workers):
        raise ValueError(f"train.steps={train.steps} must be a multiple of data.num_workers={data.num_workers}: "
                         f"open_clip_train gives every loader worker the same number of batches")
    flags = ["--model", config.model.name, "--train-data", train_pattern, "--dataset-type", "webdataset",
             "--dataset-resampled", "--train-num-samples", str(train.steps * data.batch_size * processes),
             "--epochs", "1", "--batch-size", str(data.batch_size), "--lr", repr(optim.lr),
             "--wd", repr(optim.weight_decay), "--beta1", repr(optim.betas[0]), "--beta2", repr(optim.betas[1]),
             "--eps", repr(optim.eps), "--warmup", str(optim.warmup_steps),
             "--precision", "fp32",
             "--aug-cfg", f"scale=({data.crop_scale},1.0)", "--workers", str(data.num_workers),
             "--seed", str(config.seed), "--log-every-n-steps", "1", "--logs", logs, "--name", name]
    if optim.grad_clip > 0:
        flags += ["--grad-clip-norm", repr(optim.grad_clip)]
    if processes > 1:
        flags += ["--local-loss", "--gather-with-grad"]
    return flags


def open_clip_train_default_flags(*, model: str, train_pattern: str, logs: str, name: str,
                                  epochs: int | None = None) -> list[str]:
    """open_clip_train with its defaults: only the model, the data and where to log (every step, for the
    final loss); the number of samples per epoch comes from the shards' sizes.json."""
    flags = ["--model", model, "--train-data", train_pattern, "--log-every-n-steps", "1", "--logs", logs,
             "--name", name]
    return flags + (["--epochs", str(epochs)] if epochs is not None else [])


def dmlscale_command(overrides: list[str], *, processes: int) -> list[str]:
    return [sys.executable, "-m", "dmlscale.cli", "train", *(["--nproc", str(processes)] if processes > 1 else []),
            *overrides]


def open_clip_train_command(flags: list[str], *, processes: int, args_file: Path) -> list[str]:
    """The entry (compat applied in each process) alone, or under torchrun for 2+ processes; the flags
    travel in args_file (torchrun would misread `--logs`)."""
    args_file.write_text(json.dumps(flags))
    if processes == 1:
        return [sys.executable, str(ENTRY), str(args_file)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            str(ENTRY), str(args_file)]


def run_environment(probe_dir: Path, *, threads: int | None) -> dict[str, str]:
    """The environment of both systems' commands: this checkout and the probe first on PYTHONPATH, no GPU,
    OMP_NUM_THREADS=threads (None: unset, each system's own default), no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and k != "OMP_NUM_THREADS"}
    path = [str(PROBE), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(path), E2E_PROBE_DIR=str(probe_dir), CUDA_VISIBLE_DEVICES="")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_probed(command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> dict:
    """Run `command` to its end with its output in log_path; launch and exit wall times, load averages."""
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        launched = time.time()
        completed = subprocess.run(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=RUN_TIMEOUT_S)
        exited = time.time()
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited with {completed.returncode}; log {log_path}:\n{tail}")
    return {"launched": launched, "exited": exited, "load_before": load_before, "load_after": os.getloadavg()[0]}


def global_batch_of_run(system: str, run_dir: Path) -> int:
    """Samples per optimizer step as the finished run recorded them: dmlscale's config.yaml (data.batch_size
    x world_size of summary.json), open_clip_train's params.txt (batch_size x world_size)."""
    if system == "dmlscale":
        import yaml

        per_rank = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["batch_size"]
        return per_rank * json.loads((run_dir / "summary.json").read_text())["world_size"]
    params = dict(line.split(": ", 1) for line in (run_dir / "params.txt").read_text().splitlines() if ": " in line)
    return int(params["batch_size"]) * int(params["world_size"])


def read_probe(probe_dir: Path) -> dict[int, list[dict]]:
    """pid -> that process's probe records."""
    return {int(path.stem): [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in probe_dir.glob("*.jsonl")}


def summarize_probe(records: dict[int, list[dict]], *, launched: float, exited: float, global_batch: int) -> dict:
    """The figures of one run from its probe records. The training processes are those that stepped;
    step i ends when the last of them ends it, and step 1 starts at the first training forward.
      samples_per_s: steps x global_batch / (last step end - first step start)
      steady_samples_per_s: the same from the end of step ceil(0.1 steps) on (the first 10% left out)
      startup_s: launch -> first step start; teardown_s: last step end -> exit of the command
      peak_rss_mib: the largest VmHWM of a training process at its exit"""
    ranks = {pid: recs for pid, recs in records.items() if any(r["event"] == "step" for r in recs)}
    if not ranks:
        raise RuntimeError("no process of the run recorded an optimizer step (probe not loaded?)")
    ends = {pid: [r["t"] for r in recs if r["event"] == "step"] for pid, recs in ranks.items()}
    counts = {len(times) for times in ends.values()}
    if len(counts) != 1:
        raise RuntimeError(f"the training processes took different numbers of steps: {sorted(counts)}")
    num_steps = counts.pop()
    skip = max(1, math.ceil(STEADY_SKIP * num_steps))
    if num_steps <= skip:
        raise RuntimeError(f"{num_steps} steps leave no steady state to measure")
    starts, peaks = [], []
    for pid, recs in ranks.items():
        first = [r["t"] for r in recs if r["event"] == "first_forward"]
        exits = [r["peak_rss_kib"] for r in recs if r["event"] == "exit"]
        if not first or not exits:
            raise RuntimeError(f"process {pid} stepped but has no first_forward / exit record")
        starts.append(first[0])
        peaks.append(exits[-1])
    step_end = [max(times[i] for times in ends.values()) for i in range(num_steps)]
    first_start = min(starts)
    return {"processes": len(ranks), "steps": num_steps, "global_batch": global_batch,
            "samples_per_s": num_steps * global_batch / (step_end[-1] - first_start),
            "steady_samples_per_s": (num_steps - skip) * global_batch / (step_end[-1] - step_end[skip - 1]),
            "startup_s": first_start - launched, "teardown_s": exited - step_end[-1],
            "peak_rss_mib": max(peaks) / 1024}

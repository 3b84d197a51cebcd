"""End to end: dmlscale train vs open_clip_train on the same shards, model, batch, schedule and threads.

Run:  .venv/bin/python benchmarks/e2e_vs_openclip.py [--configs 1x1,1x2,2x1] [--steps 300] [--repeats 3]
          [--global-batch 128] [--workers 0] [--no-defaults] [--work-dir DIR] [--quick]

Writes the digits shards once (the writer of `dmlscale shards --source digits`, 100 samples per shard
so that open_clip_train's default 4 loader workers each get shards), then trains the quickstart model
(dmlscale/configs/models/dml-quickstart-rn.json, registered in open_clip for open_clip_train) with both
systems for every PxT of --configs (P processes x T threads each): global batch 128, --steps steps, fp32,
the quickstart recipe's AdamW (lr, betas, eps, weight decay), warmup + cosine schedule and gradient
clipping (e2e_runs.open_clip_train_flags maps them onto open_clip_train's flags), open_clip's training
crop in both, the same loader workers and seed. One process: `dmlscale train` and open_clip_train
alone; P > 1: `dmlscale train --nproc P` and open_clip_train under torchrun with --local-loss
--gather-with-grad. Runs alternate dmlscale / open_clip_train, config by config, --repeats times, with
the 1-minute load average before each run. Then, unless --no-defaults, once, each system with its own
defaults on 1 process: `dmlscale train` (the quickstart recipe as it ships: 300 steps of 128, fp32, its
default threads (the cores it may use), evaluation at steps 100, 200 and the end) vs open_clip_train with only --model, --train-data,
--logs/--name and --log-every-n-steps 1 (its defaults: 32 epochs of the 1347 samples in batches of 64,
10000 warmup steps, fp16 autocast, 4 loader workers, torch's default threads); --defaults-epochs N
shortens the latter.

Every command runs under the step probe (e2e_probe/sitecustomize.py, torch's global optimizer and module
hooks; neither trainer is changed), so both are timed the same way: samples/s over the whole loop and in
steady state (first 10% of steps left out), start-up (launch to the first training forward), teardown
(last step to exit) and the peak RSS of a training process. Final loss: the mean training loss over the
last 10 steps (dmlscale's last log window; open_clip_train logs every step, rank 0's local loss with
--local-loss). Zero-shot top-1: both final models go through the same code (e2e_scoring.score, dmlscale
eval's evaluate_run) on the 450 held-out digits. open_clip_train's incompatibilities here (a pandas
import, webdataset 1.0's end-of-shard marker, device_ids for DDP on the CPU) are handled in its entry
(open_clip_compat.py). Known differences left as they are: open_clip_train draws shards with
replacement (--dataset-resampled, to take exactly --steps steps) with a 5000-sample shuffle buffer,
dmlscale reads epochs with a 1000-sample buffer; open_clip_train decays the token and positional
embeddings, dmlscale does not. --quick: 20 steps, 1 repeat, defaults runs of 20 steps / 1 epoch (a check
that everything runs).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # this process only writes shards and scores; it must not compete
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dmlscale

import e2e_runs  # noqa: E402
import e2e_scoring  # noqa: E402

MODEL = "dml-quickstart-rn"
SYSTEMS = ("dmlscale", "open_clip_train")


def parse_configs(text: str) -> list[tuple[int, int]]:
    """"1x1,1x2,2x1" -> [(processes, threads), ...]; "" -> [] (only the defaults runs)."""
    configs = []
    for item in filter(None, text.split(",")):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"--configs item {item!r} is not PxT (processes x threads, both >= 1), e.g. 2x1")
        configs.append((int(parts[0]), int(parts[1])))
    return configs


def matched_open_clip_flags(shards: Path, pattern: str, folder: Path, *, processes: int, threads: int, steps: int,
                            global_batch: int, workers: int) -> list[str]:
    """open_clip_train's flags for the matched run of dmlscale's config (ValueError when there is none)."""
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG, e2e_runs.matched_overrides(
        str(shards), steps=steps, global_batch=global_batch, processes=processes, threads=threads, workers=workers))
    return e2e_runs.open_clip_train_flags(config, processes=processes, train_pattern=pattern, logs=str(folder),
                                          name="run")


def run_one(system: str, *, label: str, repeat: int, work: Path, shards: Path, pattern: str, eval_config: Path,
            steps: int, global_batch: int, workers: int, quick: bool, defaults_epochs: int | None) -> dict:
    """One probed training run of `system` for `label` (PxT, or "defaults") and its scores."""
    defaults = label == "defaults"
    processes, threads = (1, None) if defaults else map(int, label.split("x"))
    folder = work / "runs" / f"repeat{repeat}" / label / system
    probe_dir = folder / "probe"
    probe_dir.mkdir(parents=True)
    if system == "dmlscale":
        if defaults:
            overrides = [f"data.root={shards}"] + ([f"train.steps={steps}"] if quick else [])
        else:
            overrides = e2e_runs.matched_overrides(str(shards), steps=steps, global_batch=global_batch,
                                                   processes=processes, threads=threads, workers=workers)
        command = e2e_runs.dmlscale_command(overrides + [f"run_dir={folder / 'run'}", "name=e2e"],
                                            processes=processes)
    else:
        if defaults:
            flags = e2e_runs.open_clip_train_default_flags(model=MODEL, train_pattern=pattern, logs=str(folder),
                                                           name="run", epochs=defaults_epochs)
        else:
            flags = matched_open_clip_flags(shards, pattern, folder, processes=processes, threads=threads,
                                            steps=steps, global_batch=global_batch, workers=workers)
        command = e2e_runs.open_clip_train_command(flags, processes=processes, args_file=folder / "args.json")
    if repeat == 0:
        print(f"  {label} {system}: {' '.join(command)}", flush=True)
    env = e2e_runs.run_environment(probe_dir, threads=threads)
    times = e2e_runs.run_probed(command, env=env, cwd=folder, log_path=folder / "output.log")
    run_dir = folder / "run"
    batch = e2e_runs.global_batch_of_run(system, run_dir)  # as the run itself recorded it
    row = {"label": label, "system": system, **times,
           **e2e_runs.summarize_probe(e2e_runs.read_probe(probe_dir), launched=times["launched"],
                                      exited=times["exited"], global_batch=batch)}
    if system == "dmlscale":
        state = e2e_scoring.dmlscale_state(run_dir)
        row["final_loss"], _ = e2e_scoring.dmlscale_final_loss(run_dir)
    else:
        state = e2e_scoring.open_clip_train_state(run_dir)
        row["final_loss"] = e2e_scoring.open_clip_train_final_loss(run_dir, window=10)
    row.update(e2e_scoring.score(state, model_cfg=e2e_scoring.model_config(MODEL), eval_config=eval_config,
                                 folder=folder / "scored"))
    print(f"  {label:<9}{system:<16}{row['steps']:>5} steps {row['samples_per_s']:>7.0f} samples/s "
          f"(steady {row['steady_samples_per_s']:.0f})  start-up {row['startup_s']:.1f} s  teardown "
          f"{row['teardown_s']:.1f} s  {row['peak_rss_mib']:.0f} MiB  loss {row['final_loss']:.3f}  top-1 "
          f"{row['top1']:.3f}  load {row['load_before']:.1f}", flush=True)
    return row


FIELDS = [("samples_per_s", "samples/s", ".0f"), ("steady_samples_per_s", "steady/s", ".0f"),
          ("startup_s", "start-up s", ".1f"), ("teardown_s", "teardown s", ".1f"),
          ("peak_rss_mib", "RSS MiB/proc", ".0f"), ("final_loss", "final loss", ".3f"), ("top1", "top-1", ".3f"),
          ("steps", "steps", ".0f"), ("global_batch", "batch", ".0f"), ("load_before", "load avg", ".1f")]
NOT_RATIOS = ("steps", "global_batch", "load_before")


def medians(rows: list[dict], label: str, system: str) -> dict:
    chosen = [row for row in rows if row["label"] == label and row["system"] == system]
    return {key: statistics.median(row[key] for row in chosen) for key, _, _ in FIELDS}


def print_tables(rows: list[dict], labels: list[str], repeats: int) -> None:
    matched = [label for label in labels if label != "defaults"]
    if not matched:
        return print_details(rows, labels)
    print(f"\nMatched runs, median of {repeats} repeat(s) (procs x threads; ratio = dmlscale / open_clip_train)")
    print(f"{'PxT':<6}{'dmlscale samples/s':>20}{'open_clip_train samples/s':>27}{'ratio':>8}"
          f"{'top-1 dmlscale':>16}{'top-1 open_clip_train':>23}{'steps':>7}")
    for label in matched:
        a, b = medians(rows, label, "dmlscale"), medians(rows, label, "open_clip_train")
        print(f"{label:<6}{a['samples_per_s']:>20.0f}{b['samples_per_s']:>27.0f}"
              f"{a['samples_per_s'] / b['samples_per_s']:>7.2f}x{a['top1']:>16.3f}{b['top1']:>23.3f}{a['steps']:>7.0f}")
    print_details(rows, labels)


def print_details(rows: list[dict], labels: list[str]) -> None:
    print("\nAll figures (medians; the ratio row is dmlscale / open_clip_train)")
    print(f"{'run':<10}{'system':<17}" + "".join(f"{title:>13}" for _, title, _ in FIELDS))
    for label in labels:
        a, b = medians(rows, label, "dmlscale"), medians(rows, label, "open_clip_train")
        for system, values in (("dmlscale", a), ("open_clip_train", b)):
            print(f"{label:<10}{system:<17}" + "".join(f"{values[key]:>13{fmt}}" for key, _, fmt in FIELDS))
        print(f"{label:<10}{'ratio':<17}" + "".join(
            f"{a[key] / b[key]:>12.2f}x" if b[key] and key not in NOT_RATIOS else f"{'':>13}"
            for key, _, _ in FIELDS))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="1x1,1x2,2x1", help="processes x threads, comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes per rank (both systems)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defaults", action=argparse.BooleanOptionalAction, default=True,
                        help="also each system with its own defaults (1 process)")
    parser.add_argument("--defaults-epochs", type=int, default=None,
                        help="open_clip_train's --epochs in the defaults run (default: its own, 32; on a CPU its "
                             "fp16 autocast takes ~15 s per step of 64 here, so 32 epochs take hours)")
    parser.add_argument("--work-dir", help="keep shards, runs and logs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 repeat: a check that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.defaults_epochs = 20, 1, 1
    for name in ("steps", "global_batch", "repeats", "defaults_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    configs = parse_configs(args.configs)
    if not configs and not args.defaults:
        raise ValueError("--configs '' with --no-defaults leaves nothing to run")
    for processes, threads in configs:  # every setting checked before the first run
        matched_open_clip_flags(Path("shards"), "shards.tar", Path("logs"), processes=processes, threads=threads,
                                steps=args.steps, global_batch=args.global_batch, workers=args.workers)
    temporary = None if args.work_dir else tempfile.TemporaryDirectory(prefix="e2e_vs_openclip_")
    work = Path(args.work_dir or temporary.name).resolve()
    if (work / "runs").exists():
        raise ValueError(f"--work-dir {str(work)!r} already holds runs/; give an empty or new folder")
    from dmlscale.data.digits import write_digits_shards

    shards = work / "digits"
    summary = write_digits_shards(shards, samples_per_shard=100)["train"]
    pattern = str(shards / "train" / f"{{000000..{len(summary['shards']) - 1:06d}}}.tar")
    eval_config = e2e_scoring.write_eval_config(str(shards), work / "eval_config.yaml")
    print(f"{len(summary['shards'])} train shards in {shards}; {os.cpu_count()} CPUs; steps {args.steps}, global "
          f"batch {args.global_batch}, workers {args.workers}, repeats {args.repeats}", flush=True)
    labels = [f"{p}x{t}" for p, t in configs]
    common = dict(work=work, shards=shards, pattern=pattern, eval_config=eval_config, steps=args.steps,
                  global_batch=args.global_batch, workers=args.workers, quick=args.quick,
                  defaults_epochs=args.defaults_epochs)
    rows = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for label in labels:
            for system in SYSTEMS:  # A/B/A/B: the two systems of a config back to back
                rows.append(run_one(system, label=label, repeat=repeat, **common))
    if args.defaults:  # once: each system as it ships
        print("defaults (once)", flush=True)
        rows += [run_one(system, label="defaults", repeat=0, **common) for system in SYSTEMS]
    print_tables(rows, labels + (["defaults"] if args.defaults else []), args.repeats)
    if temporary is not None:
        temporary.cleanup()
    return rows


if __name__ == "__main__":
    main()

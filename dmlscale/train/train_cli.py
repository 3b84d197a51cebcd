"""`dmlscale train [--config RECIPE|FILE] [--resume TAG] [--nproc N] [key=value ...]`.

Without --config it runs the packaged quickstart recipe, dmlscale/configs/quickstart.yaml (digits shards
written if missing, a small CLIP on the CPU, zero-shot accuracy on held-out digits with unseen prompts). Under torchrun or Slurm every
process runs this command and finds its rank in the environment; `--nproc N` instead starts N local
gloo processes itself (no torchrun needed), and passes SIGTERM / SIGUSR1 on to them.

Exit codes: 0 finished (or already finished: a resume past train.steps does nothing); EXIT_STOPPED (75,
"temporary failure") stopped before the end by a signal or train.stop_at, with a checkpoint to resume
from; 1 the run failed (the message says why); 2 a user error, one line: bad arguments or config, bad
data past its limit, a run folder that holds another run or is in use. A --nproc rank's user error
reaches this process whole and is reported the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from dmlscale.train.config import Config, ConfigWarning, load_config, section_from_dict

RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs"  # package data: ships in the wheel
DEFAULT_CONFIG = RECIPE_DIR / "quickstart.yaml"
EXIT_STOPPED = 75  # preempted or stopped at train.stop_at: resumable, not finished (EX_TEMPFAIL)


class RankFailed(RuntimeError):
    """A --nproc process failed; the message is that rank's error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="RECIPE",
                        help=f"a packaged recipe by name ({', '.join(recipe_names())}) or a YAML file "
                             f"(default: {DEFAULT_CONFIG.stem})")
    parser.add_argument("--resume", default=None, metavar="TAG",
                        help="'latest' (a fresh start when there is no checkpoint yet) or a checkpoint tag; "
                             "same as checkpoint.resume=TAG")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="start N local processes joined by gloo (instead of torchrun)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")


def recipe_names() -> list[str]:
    """The recipes that ship in the package (dmlscale/configs/*.yaml), by name."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def resolve_config_path(path: str | None) -> Path:
    """--config: a YAML file that exists, else a packaged recipe's name; neither is an error naming both."""
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            raise ValueError(f"the default recipe {str(DEFAULT_CONFIG)!r} is missing from the installed package; "
                             f"pass --config FILE")
        return DEFAULT_CONFIG
    if Path(path).is_file():
        return Path(path)
    packaged = RECIPE_DIR / f"{path}.yaml"
    if "/" not in path and packaged.is_file():
        return packaged
    hint = f" (the recipes ship in the package: --config {Path(path).stem})" if Path(path).stem in recipe_names() else ""
    raise ValueError(f"--config {path!r} is neither a YAML file nor a packaged recipe{hint}; "
                     f"recipes: {recipe_names()}")


FAILED_RANK_GRACE_S = 5.0


# The --nproc ranks fork from a fork server that has imported these once, instead of each rank importing
# torch, DeepSpeed and open_clip again (5-10 s per rank when ranks outnumber cores); DeepSpeed through
# deepspeed_quiet, so its start-up lines are filtered in every rank. The server has only imported modules;
# each rank takes the parent's environment and working directory as they are at the launch (see
# _spawned_rank), so it starts as a spawned process would.
FORKSERVER_PRELOAD = ["torch", "dmlscale.distributed", "dmlscale.train.deepspeed_quiet", "open_clip",
                      "dmlscale.train.trainer"]


def _spawned_rank(local_rank: int, world_size: int, port: int, config_dict: dict, out_dir: str,
                  parent_env: dict[str, str], parent_cwd: str) -> None:
    """One of the --nproc processes: the parent's environment and directory, torchrun's variables for this
    rank, then the trainer. Its outcome (rank 0's summary, or any rank's error) is written to out_dir."""
    os.environ.clear()
    os.environ.update(parent_env)
    os.chdir(parent_cwd)
    warnings.filterwarnings("ignore", category=ConfigWarning)  # the parent said them once
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from dmlscale.distributed.env import destroy_process_group
    from dmlscale.train.trainer import train

    try:
        summary = train(section_from_dict(Config, config_dict))
    except Exception as error:
        # a user error (ValueError: bad config, bad data, a taken run folder) travels whole, so the parent
        # raises the very same error; any other failure as its type, message and traceback
        user_error = _pickled(error) if isinstance(error, ValueError) else None
        Path(out_dir, f"error{local_rank}.json").write_text(json.dumps(
            {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc(),
             "user_error": user_error, "time": time.time()}))
        raise
    finally:
        destroy_process_group()
    if local_rank == 0:
        Path(out_dir, "summary.json").write_text(json.dumps(summary))


def spawn(config, nproc: int) -> dict:
    """Run `config` on `nproc` local processes (gloo on loopback); rank 0's summary. SIGTERM / SIGUSR1 to
    this process are passed on to every rank, which then stop together with a checkpoint."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    from dmlscale.distributed import world_info_from_env
    from dmlscale.distributed.env import free_port
    from dmlscale.train.stop_signal import SIGNALS

    launcher = world_info_from_env().launcher
    if launcher != "single":
        raise ValueError(f"--nproc {nproc} starts its own processes; it cannot run under torchrun or Slurm "
                         f"(this process was started by {launcher})")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)  # no effect once it runs
        context = mp.start_processes(_spawned_rank, nprocs=nproc, join=False, start_method="forkserver",
                                     args=(nproc, free_port(), config.to_dict(), out_dir, dict(os.environ),
                                           os.getcwd()))

        def forward(signum, frame) -> None:
            for process in context.processes:
                if process.is_alive():
                    os.kill(process.pid, signum)
        previous = {signum: signal.signal(signum, forward) for signum in SIGNALS}
        try:
            while True:
                try:
                    # a failed rank's peers get 5 s to write their own error, then SIGTERM and, 5 s later, SIGKILL
                    # (torch waits 30 s by default; a stopped rank would hold the exit that long)
                    if context.join(timeout=1, grace_period=FAILED_RANK_GRACE_S):
                        break
                except ProcessException:
                    _raise_rank_error(Path(out_dir))
                    raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return json.loads(Path(out_dir, "summary.json").read_text())


def _pickled(error: ValueError) -> str:
    """The error as hex pickle; a plain ValueError with its message when it does not pickle and load back."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:
        data = pickle.dumps(ValueError(str(error)))
    return data.hex()


def _raise_rank_error(out_dir: Path) -> None:
    """Raise the error of the rank that failed first (the others' may only follow from it): a user error as
    itself, the same ValueError one process raises, so the command reports it as one line, exit 2 (prefixed
    with its rank when other ranks raised different user errors); any other failure as RankFailed."""
    errors = sorted((json.loads(path.read_text()) | {"rank": int(path.stem[len("error"):])}
                     for path in out_dir.glob("error*.json")), key=lambda error: (error["time"], error["rank"]))
    if not errors:
        return
    first = errors[0]
    if first["user_error"] is None:
        raise RankFailed(f"rank {first['rank']}: {first['type']}: {first['message']}") from None
    if all(error["message"] == first["message"] for error in errors if error["user_error"] is not None):
        raise pickle.loads(bytes.fromhex(first["user_error"])) from None
    raise ValueError(f"rank {first['rank']}: {first['message']}") from None


def print_summary(summary: dict, run_dir: str) -> None:
    if summary.get("stopped"):
        print(f"dmlscale train: stopped after step {summary['step']} ({summary['cause']}), checkpoint saved; "
              f"continue with --resume latest (run folder {run_dir}); exit code {EXIT_STOPPED}")
        return
    if summary.get("already_finished"):
        return
    shown = {k: v for k, v in summary.items() if k.startswith("eval/") and not k.endswith("rank")}
    for key, value in shown.items():
        print(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")  # counts as ints
    print(f"dmlscale train: {summary['step']} steps on {summary['world_size']} process(es) in "
          f"{summary['seconds']:.1f} s; run folder {run_dir}")


def main_from_args(args: argparse.Namespace) -> dict:
    if isinstance(args.nproc, bool) or args.nproc < 1:
        raise ValueError(f"--nproc must be an int >= 1, got {args.nproc!r}")
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    config = load_config(resolve_config_path(args.config), overrides)
    if args.nproc > 1:
        if config.checkpoint.resume is None:  # the ranks refuse it too; said here before starting them
            from dmlscale.train.session import refuse_fresh_start_over_a_run

            refuse_fresh_start_over_a_run(config.run_dir)
        summary = spawn(config, args.nproc)
    else:
        from dmlscale.train.trainer import train

        summary = train(config)
    from dmlscale.distributed import world_info_from_env

    if world_info_from_env().rank == 0:  # torchrun, Slurm or --nproc's parent
        print_summary(summary, config.run_dir)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """`dmlscale train` without the `train`, for tests and scripts: [--config RECIPE] [--resume TAG] [--nproc N]
    [key=value ...]; returns rank 0's summary, raises what the command would report."""
    parser = argparse.ArgumentParser(prog="dmlscale train")
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))

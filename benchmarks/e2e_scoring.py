"""One evaluator for the final models of both trainers (e2e_vs_openclip.py), and their final losses.

Each system's final weights become a state dict of the same open_clip architecture: dmlscale's from its
export (export/open_clip_pytorch_model.bin), open_clip_train's from its last checkpoint (epoch_N.pt,
"module." of DDP taken off). `score` then treats both alike: the state is checked against the
architecture's own state dict (same names, same sizes; a tensor stored with another shape of the same
size, open_clip_train's scalar logit_scale, takes the reference's shape), written with dmlscale's export
writer beside one shared run config, and scored by `dmlscale eval`'s evaluate_run: zero-shot top-1 on the
held-out digits with the recipe's unseen prompt templates.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

LOSS_PATTERN = re.compile(r"\bLoss: ([-+0-9.eE]+|nan|inf) \(")  # open_clip_train's total, not "Contrastive_loss"


def write_eval_config(root: str, path: Path) -> Path:
    """The quickstart recipe's evaluation settings on the shards under `root`, as a run config file."""
    from dmlscale.train.config import load_config, save_config
    from dmlscale.train.train_cli import DEFAULT_CONFIG

    save_config(load_config(DEFAULT_CONFIG, [f"data.root={root}"]), path)
    return path


def dmlscale_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "export" / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)


def open_clip_train_state(log_dir: Path) -> dict:
    """The model state of open_clip_train's last checkpoint in log_dir/checkpoints (epoch_N.pt, highest N)."""
    import torch

    checkpoints = sorted((log_dir / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise RuntimeError(f"open_clip_train left no epoch_N.pt in {log_dir / 'checkpoints'}")
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["state_dict"]
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


def model_config(name: str) -> dict:
    """The open_clip model config both systems build (dmlscale/configs/models/NAME.json)."""
    from open_clip_compat import MODEL_CONFIG_DIR

    return json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())


def aligned_state(state: dict, model_cfg: dict) -> dict:
    """`state` with the names and shapes of the model dmlscale.models.load_exported builds from model_cfg;
    a missing or extra name, or a tensor of another size, is an error (not the same architecture)."""
    import open_clip

    reference = open_clip.CLIP(**model_cfg, nonscalar_logit_scale=True).state_dict()
    if set(state) != set(reference):
        raise RuntimeError(f"not the same architecture: missing {sorted(set(reference) - set(state))[:5]}, "
                           f"extra {sorted(set(state) - set(reference))[:5]}")
    aligned = {}
    for name, tensor in state.items():
        if tensor.numel() != reference[name].numel():
            raise RuntimeError(f"not the same architecture: {name} has {tuple(tensor.shape)}, the model "
                               f"{tuple(reference[name].shape)}")
        aligned[name] = tensor.detach().float().reshape(reference[name].shape).contiguous()
    return aligned


def score(state: dict, *, model_cfg: dict, eval_config: Path, folder: Path) -> dict:
    """Zero-shot metrics of the model with weights `state`, through `dmlscale eval`'s code path."""
    from dmlscale.train.eval_cli import evaluate_run
    from dmlscale.train.export import RUN_CONFIG, write_export

    write_export(aligned_state(state, model_cfg), {"family": "open_clip", "model_cfg": model_cfg}, folder)
    shutil.copyfile(eval_config, folder / RUN_CONFIG)
    metrics = evaluate_run(folder)
    return {"top1": metrics["eval/zero_shot_top1"], "num_samples": metrics["eval/num_samples"]}


def dmlscale_final_loss(run_dir: Path) -> tuple[float, int]:
    """(train/loss of the last record in metrics.jsonl, train.log_every): the mean over that window."""
    import yaml

    window = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["log_every"]
    losses = [record["metrics"]["train/loss"] for record in map(json.loads, (run_dir / "metrics.jsonl").open())
              if "train/loss" in record["metrics"]]
    if not losses:
        raise RuntimeError(f"{run_dir / 'metrics.jsonl'} holds no train/loss")
    return losses[-1], window


def open_clip_train_losses(log_text: str) -> list[float]:
    """The total loss of every logged step of an open_clip_train log, in order (rank 0's with --local-loss)."""
    return [float(value) for value in LOSS_PATTERN.findall(log_text)]


def open_clip_train_final_loss(log_dir: Path, *, window: int) -> float:
    """The mean of the last `window` logged step losses (logged every step): dmlscale's window."""
    losses = open_clip_train_losses((log_dir / "out.log").read_text(errors="replace"))
    if len(losses) < window:
        raise RuntimeError(f"{log_dir / 'out.log'} logs {len(losses)} step losses, fewer than {window}")
    return sum(losses[-window:]) / window

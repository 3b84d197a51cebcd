"""`dmlscale eval --checkpoint RUN_DIR [--tag TAG] [--data SHARDS] [--templates heldout|train|both]`.

Rebuilds the run's model from RUN_DIR/config.yaml, loads the consolidated fp32 weights of checkpoint
TAG (default: latest; any ZeRO stage and world size), and scores it on SHARDS (default: the run's eval
shards): zero-shot top-1/top-5 and retrieval recall for image-text runs, precision@1, R-precision and
MAP@R for labelled runs. Prints the metrics and, with --output, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                        help="a run folder of `dmlscale train` (holds config.yaml and checkpoints/)")
    parser.add_argument("--tag", default="latest", help="checkpoint tag, e.g. step_00000300 (default: latest)")
    parser.add_argument("--data", default=None, metavar="SHARDS",
                        help="evaluation shards (pattern or folder of .tar; default: the run's eval shards)")
    parser.add_argument("--templates", default=None, choices=("heldout", "train", "both"),
                        help="zero-shot prompt templates (default: the run's eval.templates)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    parser.add_argument("--output", default=None, help="write the metrics to this JSON file")


def _shards(data: str | None) -> list[str] | None:
    if data is None:
        return None
    path = Path(data)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if not shards:
            raise ValueError(f"--data {data!r} is a folder without .tar shards")
        return shards
    return [data]


def evaluate_run(run_dir: str | Path, *, tag: str = "latest", data: str | None = None, templates: str | None = None,
                 batch_size: int | None = None) -> dict:
    """Metrics of checkpoint `tag` of `run_dir` on `data` (single process, CPU or the first GPU)."""
    import torch

    from dmlscale.train import build
    from dmlscale.train.checkpoint import resolve_tag
    from dmlscale.train.config import load_config
    from dmlscale.train.evaluate import evaluate
    from dmlscale.train.export import consolidated_state_dict

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"--checkpoint {str(run_dir)!r} is not a run folder (no config.yaml)")
    overrides = [] if templates is None else [f"eval.templates={templates}"]
    if batch_size is not None:
        overrides.append(f"data.eval_batch_size={batch_size}")
    config = load_config(run_dir / "config.yaml", overrides)
    checkpoint_dir = run_dir / "checkpoints"
    resolved = resolve_tag(checkpoint_dir, tag)
    model = build.build_run_model(config)
    model.load_state_dict(consolidated_state_dict(checkpoint_dir, resolved), strict=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    shards = _shards(data) or build.split_shards(config.data, "test")
    tokenize = None
    if config.data.task == "image_text":
        tokenize = build.tokenize_fn(*build.tokenizer_for(model, context_length=config.model.context_length))
    metrics = evaluate(model, shards, task=config.data.task, rank=0, world_size=1,
                       batch_size=config.data.eval_batch_size,
                       image_transform=build.image_transform(config.data.image_size),
                       tokenize=tokenize, classnames=build.zero_shot_classnames(config),
                       templates=build.zero_shot_templates(config), retrieval=config.eval.retrieval, device=device)
    return {"checkpoint": resolved, **metrics}


def main_from_args(args: argparse.Namespace) -> dict:
    metrics = evaluate_run(args.checkpoint, tag=args.tag, data=args.data, templates=args.templates,
                           batch_size=args.batch_size)
    for key, value in metrics.items():
        print(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics

"""`dmlscale eval --checkpoint RUN_DIR|EXPORT_DIR [--tag TAG] [--data SHARDS] [--templates heldout|train|both]`.

Scores either checkpoint TAG (default: latest; any ZeRO stage and world size) of a run folder, its model
rebuilt from RUN_DIR/config.yaml, or the exported weights of `dmlscale export` / a run's export/ folder
(dmlscale.models.load_exported), with the run config stored beside them (run_config.yaml) or in the run
folder around them. Data: SHARDS (default: the run's eval shards). Image-text runs get zero-shot
top-1/top-5 and retrieval recall, labelled runs precision@1, R-precision and MAP@R. Prints how many
samples were scored, a warning naming the shards of any unreadable samples left out, and the metrics;
with --output, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR|EXPORT_DIR",
                        help="a run folder of `dmlscale train` (holds config.yaml and checkpoints/), or exported "
                             "weights: its export/ folder or the output of `dmlscale export`")
    parser.add_argument("--tag", default=None,
                        help="checkpoint tag of a run folder, e.g. step_00000300 (default: latest)")
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


def _export_config(export_dir: Path) -> Path:
    """The run config that belongs to exported weights: beside them, or the run folder's around them."""
    from dmlscale.train.export import RUN_CONFIG

    for candidate in (export_dir / RUN_CONFIG, export_dir.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"--checkpoint {str(export_dir)!r} holds exported weights but no {RUN_CONFIG} and is not inside "
                     f"a run folder, so the task, image size and eval data are unknown; export it again with "
                     f"`dmlscale export --checkpoint RUN_DIR --output {export_dir}` (which stores {RUN_CONFIG})")


def evaluate_run(run_dir: str | Path, *, tag: str | None = None, data: str | None = None,
                 templates: str | None = None, batch_size: int | None = None) -> dict:
    """Metrics of checkpoint `tag` of the run folder `run_dir`, or of the exported weights in the folder
    `run_dir`, on `data` (single process, CPU or the first GPU). "checkpoint" names the tag, "weights"
    the export folder; "eval/num_samples" counts the samples scored, "eval/num_skipped" the unreadable
    ones left out, and "_skipped_by_shard" / "_skipped_by_reason" break those down."""
    import torch

    from dmlscale.models import exported_spec, is_export_dir, load_exported
    from dmlscale.train import build
    from dmlscale.train.config import load_config
    from dmlscale.train.evaluate import evaluate

    run_dir = Path(run_dir)
    overrides = [] if templates is None else [f"eval.templates={templates}"]
    if batch_size is not None:
        overrides.append(f"data.eval_batch_size={batch_size}")
    if (run_dir / "config.yaml").is_file():
        from dmlscale.train.checkpoint import resolve_tag
        from dmlscale.train.export import consolidated_state_dict

        config = load_config(run_dir / "config.yaml", overrides)
        checkpoint_dir = run_dir / "checkpoints"
        resolved = resolve_tag(checkpoint_dir, tag or "latest")
        model = build.build_run_model(config)
        model.load_state_dict(consolidated_state_dict(checkpoint_dir, resolved), strict=True)
        source = {"checkpoint": resolved}
    elif is_export_dir(run_dir):
        if tag is not None:
            raise ValueError(f"--tag {tag!r} picks a checkpoint of a run folder; {str(run_dir)!r} holds exported "
                             f"weights (one set): leave --tag out")
        config = load_config(_export_config(run_dir), overrides)
        family, expected = exported_spec(run_dir)["family"], build.model_family(config)
        if family != expected:
            raise ValueError(f"--checkpoint {str(run_dir)!r} holds {family} weights but its run config trains "
                             f"a {expected} model (data.task={config.data.task!r})")
        model = load_exported(run_dir)
        source = {"weights": str(run_dir)}
    else:
        raise ValueError(f"--checkpoint {str(run_dir)!r} is neither a run folder (no config.yaml) nor exported "
                         f"weights (no open_clip_config.json + open_clip_pytorch_model.bin, no model_spec.json + "
                         f"model.bin)")
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
                       templates=build.zero_shot_templates(config), retrieval=config.eval.retrieval, device=device,
                       warn_skips=False)  # main_from_args says it as a `dmlscale eval: warning:` line
    return {**source, "shards": shards, **metrics}


def describe_counts(metrics: dict) -> tuple[str, str | None]:
    """("scored N samples from S shard(s)", the skip warning or None) for `evaluate_run`'s result."""
    from dmlscale.train.evaluate import describe_skips

    shards, by_shard = metrics["shards"], metrics["_skipped_by_shard"]
    scored = f"scored {metrics['eval/num_samples']} samples from {len(shards)} shard(s)"
    if not by_shard:
        return scored, None
    return scored, describe_skips(by_shard, metrics["_skipped_by_reason"], len(shards))


def main_from_args(args: argparse.Namespace) -> dict:
    metrics = evaluate_run(args.checkpoint, tag=args.tag, data=args.data, templates=args.templates,
                           batch_size=args.batch_size)
    scored, warning = describe_counts(metrics)
    what = f"checkpoint {metrics['checkpoint']}" if "checkpoint" in metrics else "exported weights"
    print(f"dmlscale eval: {what} of {args.checkpoint}: {scored}")
    if warning is not None:
        print(f"dmlscale eval: warning: {warning}", file=sys.stderr)
    for key, value in metrics.items():
        if key.startswith("eval/"):
            print(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")
    report = {key.lstrip("_"): value for key, value in metrics.items()}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return report

"""`dmlscale export --checkpoint RUN_DIR [--tag TAG] [--output DIR]`: consolidated fp32 weights.

Merges the DeepSpeed checkpoint TAG (default: latest; any ZeRO stage, any world size) of a
`dmlscale train` run folder into weights its model family's library loads directly: for open_clip
models, DIR/open_clip_config.json + DIR/open_clip_pytorch_model.bin
(`open_clip.create_model("local-dir:DIR")`); otherwise DIR/model.bin + model_spec.json (and a
transformers text_tower/ for MiniLM-tower CLIPs), and the run's config as run_config.yaml, so that
`dmlscale eval --checkpoint DIR` scores DIR alone. Default DIR: RUN_DIR/export (what training writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                        help="a run folder of `dmlscale train` (or its checkpoints/ folder)")
    parser.add_argument("--tag", default="latest", help="checkpoint tag, e.g. step_00000300 (default: latest)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default: RUN_DIR/export)")


def checkpoints_of(run_dir: Path) -> Path:
    """The folder holding DeepSpeed checkpoints and the `latest` pointer for a run folder (or itself)."""
    if (run_dir / "checkpoints").is_dir():
        return run_dir / "checkpoints"
    if (run_dir / "latest").is_file() or any(run_dir.glob("step_*")):
        return run_dir
    raise ValueError(f"--checkpoint {str(run_dir)!r} holds no checkpoints (expected RUN_DIR/checkpoints/latest)")


def main_from_args(args: argparse.Namespace) -> Path:
    from dmlscale.train.checkpoint import resolve_tag
    from dmlscale.train.export import export_weights

    run_dir = Path(args.checkpoint)
    checkpoint_dir = checkpoints_of(run_dir)
    tag = resolve_tag(checkpoint_dir, args.tag)
    default_output = (run_dir if checkpoint_dir != run_dir else run_dir.parent) / "export"
    output = export_weights(checkpoint_dir, args.output or default_output, tag=tag)
    files = sorted(path.name for path in Path(output).iterdir())
    print(f"dmlscale export: {checkpoint_dir / tag} -> {output} ({', '.join(files)})")
    return Path(output)

"""Load the fp32 weights `dmlscale export` (and the trainer's export/) writes, as the model they came from.

An export folder holds, by model family:
  open_clip   open_clip_config.json + open_clip_pytorch_model.bin (also `open_clip.create_model("local-dir:DIR")`)
  embedder    model.bin + model_spec.json (family "embedder": trunk name and source, embedding size)
  tower_clip  model.bin + model_spec.json + text_tower/ (a transformers folder with its tokenizer)
The model is rebuilt with the builder of models/registry.py and the state dict loaded strictly, so a
weights file that does not fit its spec fails loudly instead of leaving layers at random values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dmlscale.models.registry import build_model

OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_pytorch_model.bin"
MODEL_SPEC, MODEL_WEIGHTS = "model_spec.json", "model.bin"


def is_export_dir(path: str | Path) -> bool:
    """Whether `path` holds exported weights in one of the layouts above."""
    path = Path(path)
    return ((path / OPEN_CLIP_CONFIG).is_file() and (path / OPEN_CLIP_WEIGHTS).is_file()) or (
        (path / MODEL_SPEC).is_file() and (path / MODEL_WEIGHTS).is_file())


def exported_spec(path: str | Path) -> dict:
    """The export's model spec: {"family": ..., ...}; ValueError naming the folder when it holds no export."""
    path = Path(path)
    if not is_export_dir(path):
        raise ValueError(f"{str(path)!r} holds no exported weights (expected {OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS},"
                         f" or {MODEL_SPEC} + {MODEL_WEIGHTS})")
    if (path / MODEL_SPEC).is_file():
        return json.loads((path / MODEL_SPEC).read_text())
    return {"family": "open_clip", "model_cfg": json.loads((path / OPEN_CLIP_CONFIG).read_text())["model_cfg"]}


def load_exported(path: str | Path) -> torch.nn.Module:
    """The model whose weights the export folder `path` holds, on the CPU, in eval mode."""
    path = Path(path)
    spec = exported_spec(path)
    family = spec.get("family")
    if family == "open_clip":
        import open_clip

        model_cfg = dict(spec["model_cfg"])
        model_class = open_clip.CustomTextCLIP if model_cfg.pop("custom_text", False) else open_clip.CLIP
        model = model_class(**model_cfg, nonscalar_logit_scale=True, output_dict=True)
        weights = path / OPEN_CLIP_WEIGHTS
    elif family == "embedder":
        model = build_model("embedder", spec["name"], source=spec["source"], embedding_dim=spec["embedding_dim"],
                            normalize=spec["normalize"])
        weights = path / MODEL_WEIGHTS
    elif family == "tower_clip":
        model = build_model("tower_clip", spec["name"], text_tower_dir=path / "text_tower",
                            freeze_text=spec.get("freeze_text", False))
        weights = path / MODEL_WEIGHTS
    else:
        raise ValueError(f"{str(path / MODEL_SPEC)!r} names model family {family!r}; "
                         f"dmlscale exports open_clip, embedder and tower_clip")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.dmlscale_spec = spec
    return model.eval()

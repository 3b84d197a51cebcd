"""open_clip models by built-in name or by a JSON config of our own, with DeepSpeed-safe logit parameters.

Every model built here returns open_clip's output dict (image_features, text_features, logit_scale as
exp(parameter), logit_bias when present) and keeps logit_scale / logit_bias as shape-[1] parameters:
DeepSpeed rejects 0-dim parameters. `clamp_logit_scale` bounds the scale as open_clip's trainer does
(the engine's step also clamps DeepSpeed's fp32 master copy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

OUR_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"  # package data: ships in the wheel
MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnable log-scale to [0, ln 100]


def our_config_names() -> list[str]:
    """Names of the JSON model configs that ship in the package (dmlscale/configs/models/)."""
    return sorted(path.stem for path in OUR_CONFIG_DIR.glob("*.json"))


def resolve_model_config(name: str) -> dict:
    """The open_clip model config for `name`: a path to a JSON file, one of ours, or an open_clip built-in."""
    import open_clip

    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"model config file {name!r} does not exist")
        return json.loads(path.read_text())
    if (OUR_CONFIG_DIR / f"{name}.json").is_file():
        return json.loads((OUR_CONFIG_DIR / f"{name}.json").read_text())
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}; ours: {our_config_names()}, "
                         f"open_clip: {len(open_clip.list_models())} built-ins (open_clip.list_models())")
    return cfg


def build_open_clip(name: str, *, pretrained: str | None = None, init_logit_bias: float | None = None,
                    init_logit_scale: float | None = None, grad_checkpointing: bool = False,
                    **model_kwargs: object) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP (or CustomTextCLIP) for `name`; weights from the local file
    `pretrained` when given (never downloaded). `init_logit_bias` adds SigLIP's bias parameter."""
    import open_clip

    if pretrained is not None and not Path(pretrained).is_file():
        raise ValueError(f"pretrained must be a local weights file, got {pretrained!r} (nothing is downloaded)")
    model_cfg = resolve_model_config(name)
    custom_text = bool(model_cfg.pop("custom_text", False)) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if "hf_model_name" in model_cfg.get("text_cfg", {}):
        model_cfg["text_cfg"]["hf_model_pretrained"] = False  # never fetch; use text_tower.py for local weights
    if "timm_model_name" in model_cfg.get("vision_cfg", {}):
        model_cfg["vision_cfg"]["timm_model_pretrained"] = False
    model_cfg.update(model_kwargs)
    if init_logit_bias is not None:
        model_cfg["init_logit_bias"] = float(init_logit_bias)
    if init_logit_scale is not None:
        model_cfg["init_logit_scale"] = float(init_logit_scale)
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = model_class(**model_cfg, nonscalar_logit_scale=True, output_dict=True)
    if pretrained is not None:
        open_clip.load_checkpoint(model, pretrained, strict=True)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    saved_cfg = dict(model_cfg, custom_text=custom_text) if custom_text else dict(model_cfg)
    model.dmlscale_spec = {"family": "open_clip", "name": name, "model_cfg": saved_cfg}
    return model


def clamp_logit_scale(model: torch.nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Clamp `model.logit_scale` to [0, max_value] in place after an optimizer step, as open_clip's trainer does.

    For a plain torch (or DDP) model. Under DeepSpeed the optimizer's fp32 master copy would undo this at
    the next step: dmlscale's engine step clamps both (`dmlscale.train.engine.clamp_parameter`).
    """
    param = getattr(model, "logit_scale", None)
    if param is None:
        return
    with torch.no_grad():
        param.clamp_(0.0, max_value)

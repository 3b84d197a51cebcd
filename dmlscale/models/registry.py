"""One registry from a model family name to its builder, so configs pick models by name."""

from __future__ import annotations

from typing import Callable

import torch

from dmlscale.models.clip import build_open_clip
from dmlscale.models.embedder import build_embedder
from dmlscale.models.text_tower import build_tower_clip

MODEL_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {
    "open_clip": build_open_clip,    # open_clip CLIP by built-in name or dmlscale/configs/models/<name>.json
    "tower_clip": build_tower_clip,  # open_clip image tower + transformers text tower from a local directory
    "embedder": build_embedder,      # open_clip / timm image trunk + projection, for labelled metric learning
}


def build_model(family: str, name: str, **options: object) -> torch.nn.Module:
    """Build `name` with the builder registered for `family`; options go to that builder."""
    if family not in MODEL_BUILDERS:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[family](name, **options)

"""Unimodal image embedder for labelled metric learning: an open_clip or timm image trunk + projection.

Legend: B batch, F trunk features, D embedding size.
"""

from __future__ import annotations

import torch
from torch import nn

from dmlscale.models.clip import resolve_model_config


class ImageEmbedder(nn.Module):
    """trunk [B, C, H, W] -> [B, F], then a linear projection F -> D (optionally L2-normalised).

    Distances such as CosineSimilarity normalise on their own, so `normalize` defaults to False.
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, embedding_dim: int, *, normalize: bool = False) -> None:
        super().__init__()
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"ImageEmbedder: embedding_dim must be a positive int, got {embedding_dim!r}")
        self.trunk = trunk
        self.proj = nn.Linear(trunk_dim, embedding_dim)
        self.normalize = normalize
        self.embedding_dim = embedding_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        emb_BD = self.proj(self.trunk(image))
        return nn.functional.normalize(emb_BD, dim=-1) if self.normalize else emb_BD


def build_embedder(trunk: str, *, embedding_dim: int = 128, source: str = "open_clip", pretrained: str | None = None,
                   normalize: bool = False, grad_checkpointing: bool = False) -> ImageEmbedder:
    """Random-init trunk by name: `source="open_clip"` takes the image tower of an open_clip config
    (ours or built-in), `source="timm"` a timm model without its classifier. `pretrained` is a local file
    of trunk weights."""
    if source == "open_clip":
        import open_clip

        model_cfg = resolve_model_config(trunk)
        trunk_dim = model_cfg["embed_dim"]
        trunk_model = open_clip.model._build_vision_tower(trunk_dim, model_cfg["vision_cfg"])
    elif source == "timm":
        import timm

        trunk_model = timm.create_model(trunk, pretrained=False, num_classes=0)
        trunk_dim = trunk_model.num_features
    else:
        raise ValueError(f"build_embedder: source must be 'open_clip' or 'timm', got {source!r}")
    if pretrained is not None:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        trunk_model.load_state_dict(state.get("state_dict", state), strict=True)
    if grad_checkpointing and hasattr(trunk_model, "set_grad_checkpointing"):
        trunk_model.set_grad_checkpointing(True)
    model = ImageEmbedder(trunk_model, trunk_dim, embedding_dim, normalize=normalize)
    model.dmlscale_spec = {"family": "embedder", "name": trunk, "source": source, "embedding_dim": embedding_dim,
                           "normalize": normalize}
    return model

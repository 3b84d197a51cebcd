"""Models: open_clip CLIPs (by name or our configs), transformers text towers, image embedders."""

from dmlscale.models.clip import MAX_LOGIT_SCALE, build_open_clip, clamp_logit_scale, our_config_names, resolve_model_config
from dmlscale.models.embedder import ImageEmbedder, build_embedder
from dmlscale.models.exported import exported_spec, is_export_dir, load_exported
from dmlscale.models.registry import MODEL_BUILDERS, build_model
from dmlscale.models.text_tower import TowerClip, TransformersTextTower, build_tower_clip, minilm_directory

__all__ = [
    "MAX_LOGIT_SCALE",
    "MODEL_BUILDERS",
    "ImageEmbedder",
    "TowerClip",
    "TransformersTextTower",
    "build_embedder",
    "build_model",
    "build_open_clip",
    "build_tower_clip",
    "clamp_logit_scale",
    "exported_spec",
    "is_export_dir",
    "load_exported",
    "minilm_directory",
    "our_config_names",
    "resolve_model_config",
]

"""Export a DeepSpeed checkpoint as consolidated fp32 weights that open_clip / transformers load directly.

What lands in output_dir, by the model's family (from the checkpoint's model_spec.json):
  open_clip   open_clip_config.json + open_clip_pytorch_model.bin:
              open_clip.create_model("local-dir:" + output_dir), or create_model(name, pretrained=<bin>)
  tower_clip  the above state dict as model.bin, plus text_tower/ that
              transformers.AutoModel.from_pretrained(output_dir / "text_tower") loads
  any family  model.bin: the full fp32 state dict (module names, no "module." prefix)
  with a run  run_config.yaml: the run's config.yaml, so `dmlscale eval --checkpoint DIR` knows the data and task
dmlscale.models.load_exported(DIR) rebuilds any of these models with its weights.
ZeRO partitions are merged with DeepSpeed's zero_to_fp32 utilities, so any world size can read them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dmlscale.train.checkpoint import LATEST, resolve_tag

OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
TEXT_TOWER_PREFIX = "text.transformer."
RUN_CONFIG = "run_config.yaml"  # the run's config.yaml, beside the weights: `dmlscale eval` scores the export alone


def _locate(source: Path, tag: str) -> tuple[Path, str]:
    """(run_dir, tag) for a run directory (uses `tag`, default latest) or one checkpoint directory."""
    if (source / LATEST).is_file() or tag != LATEST:
        return source, resolve_tag(source, tag)
    if list(source.glob("*model_states.pt")):
        return source.parent, source.name
    raise ValueError(f"{str(source)!r} is neither a run directory with a 'latest' pointer nor a checkpoint directory")


def consolidated_state_dict(run_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 module state dict of checkpoint `tag`, whatever the ZeRO stage and world size."""
    checkpoint_dir = run_dir / tag
    if list(checkpoint_dir.glob("*optim_states.pt")):  # ZeRO 1-3: merge the fp32 partitions
        import dmlscale.train.deepspeed_quiet  # noqa: F401  (DeepSpeed's start-up lines filtered)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir), tag=tag)
    else:  # stage 0: the module's state dict is stored whole
        model_files = sorted(checkpoint_dir.glob("mp_rank_*_model_states.pt"))
        if not model_files:
            raise ValueError(f"checkpoint {str(checkpoint_dir)!r} holds no DeepSpeed model states")
        state = torch.load(model_files[0], map_location="cpu", weights_only=False)["module"]
    return {name: tensor.detach().float().contiguous().clone() for name, tensor in state.items()}


def write_export(state: dict[str, torch.Tensor], spec: dict | None, output_dir: str | Path) -> Path:
    """Write `state` (a full fp32 state dict) for the family named in `spec`; returns output_dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    family = (spec or {}).get("family")
    if family == "open_clip":
        (output_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": spec["model_cfg"]}, indent=1))
        torch.save(state, output_dir / OPEN_CLIP_WEIGHTS)
        return output_dir
    torch.save(state, output_dir / "model.bin")
    if family == "tower_clip":
        _write_text_tower(state, Path(spec["text_tower_dir"]), output_dir / "text_tower")
    if spec is not None:
        (output_dir / "model_spec.json").write_text(json.dumps(spec, indent=1))
    return output_dir


def _write_text_tower(state: dict[str, torch.Tensor], source_dir: Path, output_dir: Path) -> None:
    """The trained transformer in transformers' own layout, with the source's tokenizer files."""
    from transformers import AutoConfig, AutoModel

    tower = AutoModel.from_config(AutoConfig.from_pretrained(source_dir, local_files_only=True))
    tower_state = {k[len(TEXT_TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_TOWER_PREFIX)}
    tower.load_state_dict(tower_state, strict=True)
    tower.save_pretrained(output_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source_dir / name).is_file():
            shutil.copy(source_dir / name, output_dir / name)


def export_weights(source: str | Path, output_dir: str | Path, *, tag: str = LATEST) -> Path:
    """Consolidate checkpoint `tag` of the run directory `source` (or the checkpoint directory `source`)
    into fp32 weights under output_dir, in the layout its model family's library loads."""
    run_dir, tag = _locate(Path(source), tag)
    spec_path = run_dir / tag / "model_spec.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else None
    output_dir = write_export(consolidated_state_dict(run_dir, tag), spec, output_dir)
    run_config = run_dir.parent / "config.yaml"  # run_dir is RUN/checkpoints: the run's resolved config
    if run_config.is_file():
        shutil.copyfile(run_config, output_dir / RUN_CONFIG)
    return output_dir

"""The typed schema of a training run: nested kw_only dataclasses, loaded from YAML plus `key=value` overrides.

Every section checks its own fields in `__post_init__` (types first, then ranges), and `Config` checks
combinations across sections. Every error is a ValueError naming the dotted key, the value and what
is allowed, so `dmlscale train optim.lr=-1` fails before anything is built.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Literal

import yaml

from dmlscale.train.schema import Section, apply_overrides, parse_override, section_from_dict  # noqa: F401

IMAGE_TEXT_LOSSES = ("clip", "siglip")
LABEL_LOSSES = ("ntxent", "supcon", "triplet", "contrastive", "multisimilarity")


class ConfigWarning(UserWarning):
    """A setting that has less or no effect in this config (said once, as `dmlscale train: warning: ...`)."""


@dataclasses.dataclass(kw_only=True)
class DataConfig(Section):
    """Where batches come from."""

    source: Literal["digits", "shards"] = "digits"  # digits: write the digits shards under `root` if missing
    root: str = "data/digits"  # folder holding train/ and test/ shards (digits source) or the default shards
    train_shards: str | None = None  # shard urls or brace pattern; null: every .tar in root/train
    eval_shards: str | None = None  # null: every .tar in root/test
    task: Literal["image_text", "image_label"] = "image_text"  # captions (CLIP) or class labels (metric learning)
    batch_size: int = 128  # per rank
    eval_batch_size: int = 256  # per rank
    num_workers: int = 0  # loader worker processes per rank
    image_size: int = 32  # side of the square model input
    crop_scale: float = 1.0  # < 1: training images get a random resized crop of at least this area share
    shuffle_buffer: int = 1000  # samples held for shuffling
    # bad data, counted over all ranks, workers and epochs of the run (the same limit at any world size)
    max_skip_fraction: float = 0.1  # stop when more than this share of the samples read was unreadable
    skip_check_after: int = 1000  # ... once this many samples were read in all
    max_repeat_fraction: float = 0.05  # stop when more than this share of the trained samples were repeats
    missing_shards: Literal["error", "skip"] = "error"  # a listed shard absent on disk or not a tar

    def check(self) -> None:
        for name in ("batch_size", "eval_batch_size", "image_size", "shuffle_buffer", "skip_check_after"):
            self._require(getattr(self, name) >= 1, name, "an int >= 1")
        self._require(self.num_workers >= 0, "num_workers", "an int >= 0")
        self._require(0 < self.crop_scale <= 1, "crop_scale", "a number in (0, 1]")
        for name in ("max_skip_fraction", "max_repeat_fraction"):
            self._require(0 <= getattr(self, name) <= 1, name, "a number in [0, 1]")


@dataclasses.dataclass(kw_only=True)
class ModelConfig(Section):
    """Which model the registry builds."""

    name: str = "dml-tiny-vit"  # open_clip model name, a JSON file stem under dmlscale/configs/models/, or a .json path
    pretrained: str | None = None  # a local weights file to start from (nothing is downloaded)
    text_tower: str | None = None  # "minilm" (the packaged MiniLM-L6) or a transformers folder; null: open_clip's
    freeze_text: bool = False  # keep the text transformer fixed (its projection still trains)
    context_length: int = 32  # tokens per caption for a transformers text tower (open_clip: the model's own)
    embed_dim: int = 128  # embedding size of the image embedder (task image_label)

    def check(self) -> None:
        self._require(bool(self.name), "name", "a non-empty model name")
        self._require(self.text_tower is None or bool(self.text_tower), "text_tower", "null, 'minilm' or a folder")
        self._require(self.context_length >= 2, "context_length", "an int >= 2")
        self._require(self.embed_dim >= 1, "embed_dim", "an int >= 1")


@dataclasses.dataclass(kw_only=True)
class LossConfig(Section):
    """The training loss; image-text losses need task image_text, label losses task image_label."""

    name: Literal["clip", "siglip", "ntxent", "supcon", "triplet", "contrastive", "multisimilarity"] = "clip"
    miner: Literal["batch_hard", "triplet_margin", "multisimilarity", "pair_margin"] | None = None
    temperature: float = 0.07  # ntxent / supcon
    margin: float = 0.2  # triplet loss and triplet_margin miner
    memory_size: int = 0  # > 0: cross-batch memory of this many embeddings (label losses)
    tiled: bool | None = None  # streamed kernel: null lets the loss decide by size

    def check(self) -> None:
        self._require(self.temperature > 0, "temperature", "a number > 0")
        self._require(self.margin >= 0, "margin", "a number >= 0")
        self._require(self.memory_size >= 0, "memory_size", "an int >= 0")
        for key in ("miner", "memory_size"):
            if self.name in IMAGE_TEXT_LOSSES and getattr(self, key):
                raise ValueError(f"{key}={getattr(self, key)!r} needs a label loss ({', '.join(LABEL_LOSSES)}); "
                                 f"name={self.name!r} takes none")


@dataclasses.dataclass(kw_only=True)
class OptimConfig(Section):
    """AdamW with linear warmup then cosine decay."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # applied to weights of rank >= 2 only
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables

    def check(self) -> None:
        self._require(self.lr > 0, "lr", "a number > 0")
        self._require(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        self._require(self.eps > 0, "eps", "a number > 0")
        self._require(self.warmup_steps >= 0, "warmup_steps", "an int >= 0")
        self._require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]")
        self._require(self.grad_clip >= 0, "grad_clip", "a number >= 0")


@dataclasses.dataclass(kw_only=True)
class TrainConfig(Section):
    """The loop and the DeepSpeed engine."""

    steps: int = 300  # optimizer steps in total
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    grad_cache_chunks: int = 1  # > 1: gradient caching, the local batch encoded in this many chunks
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10
    threads: int = 0  # torch CPU threads per rank; 0: cores / local ranks
    stop_at: int = 0  # > 0: checkpoint and stop this session at that step (time-boxed jobs); resume continues
    max_nonfinite_steps: int = 3  # a NaN/Inf loss or gradient skips the update; this many in a row stop the run
    ledger: bool = False  # write the keys of every trained sample per step and rank to run_dir/ledger/
    group_timeout_s: float = 300.0  # bound on process-group formation and on every collective

    def check(self) -> None:
        self._require(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "an int >= 1")
        self._require(self.group_timeout_s > 0, "group_timeout_s", "a number > 0")
        self._require(self.steps >= 1, "steps", "an int >= 1")
        self._require(0 <= self.zero_stage <= 3, "zero_stage", "0, 1, 2 or 3")
        self._require(self.grad_cache_chunks >= 1, "grad_cache_chunks", "an int >= 1 (1: no gradient caching)")
        self._require(self.log_every >= 1, "log_every", "an int >= 1")
        self._require(self.threads >= 0, "threads", "an int >= 0")
        self._require(0 <= self.stop_at <= self.steps, "stop_at", f"an int in [0, steps={self.steps}]")


@dataclasses.dataclass(kw_only=True)
class EvalConfig(Section):
    """Periodic and final evaluation on the eval shards."""

    every: int = 0  # steps between evaluations; 0: only at the end
    zero_shot: bool = True  # zero-shot top-1/top-5 (image_text; the eval shards' .cls are the classes)
    classnames: list[str] | None = None  # class names by label; null: the digits' names (data.source=digits)
    # prompt templates with "{}": the digits' "heldout" (never in a training caption), "train", "both", or a list
    templates: Literal["heldout", "train", "both"] | list[str] = "heldout"
    retrieval: bool = True  # image<->text recall@k (image_text) or precision@1 / MAP@R (image_label)
    max_samples: int = 0  # cap on evaluated samples; 0: all

    def check(self) -> None:
        self._require(self.every >= 0, "every", "an int >= 0")
        self._require(self.max_samples >= 0, "max_samples", "an int >= 0")
        if isinstance(self.templates, list):
            self._require(bool(self.templates) and all("{}" in t for t in self.templates), "templates",
                          "'heldout', 'train', 'both' or a non-empty list of strings with '{}'")


@dataclasses.dataclass(kw_only=True)
class CheckpointConfig(Section):
    """Checkpoints in run_dir/checkpoints; resume picks one up."""

    every: int = 0  # steps between checkpoints; 0: only at the end
    resume: str | None = None  # "latest" (starts fresh when there is none yet), a tag, or null
    export: bool = True  # write consolidated fp32 weights to run_dir/export at the end
    keep_last: int = 3  # keep the newest this many checkpoints (0: keep all)
    keep_every: int = 0  # > 0: also keep every checkpoint whose step is a multiple of this

    def check(self) -> None:
        self._require(self.every >= 0, "every", "an int >= 0")
        self._require(self.keep_last >= 0, "keep_last", "an int >= 0 (0 keeps every checkpoint)")
        self._require(self.keep_every >= 0, "keep_every", "an int >= 0")
        self._require(self.resume is None or bool(self.resume), "resume", "null, 'latest' or a checkpoint tag")


@dataclasses.dataclass(kw_only=True)
class MonitorConfig(Section):
    """Where metrics go: console, JSONL in the run folder, plots, and W&B."""

    wandb: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "dmlscale"
    console: bool = True  # progress bar on rank 0
    plots: bool = True  # loss/metric curves and similarity histograms at the end


@dataclasses.dataclass(kw_only=True)
class FaultConfig(Section):
    """Fault injection for drills and tests (off by default): real faults at chosen steps."""

    nan_steps: list[int] = dataclasses.field(default_factory=list)  # put a NaN pixel into these steps' batches
    nan_rank: int = 0  # ... on this rank only

    def check(self) -> None:
        self._require(all(step >= 1 for step in self.nan_steps), "nan_steps", "a list of steps >= 1")
        self._require(self.nan_rank >= 0, "nan_rank", "an int >= 0")


@dataclasses.dataclass(kw_only=True)
class Config(Section):
    """A whole run. `run_dir` defaults to runs/<name>."""

    name: str = "quickstart"
    run_dir: str | None = None
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    faults: FaultConfig = dataclasses.field(default_factory=FaultConfig)

    def check(self) -> None:
        self._require(bool(self.name) and "/" not in self.name, "name", "a non-empty string without '/'")
        if self.run_dir is None:
            self.run_dir = str(Path("runs") / self.name)
        image_text = self.data.task == "image_text"
        if (self.loss.name in IMAGE_TEXT_LOSSES) != image_text:
            allowed = IMAGE_TEXT_LOSSES if image_text else LABEL_LOSSES
            raise ValueError(f"loss.name={self.loss.name!r} does not fit data.task={self.data.task!r}; "
                             f"allowed for that task: {list(allowed)}")
        if self.data.batch_size % self.train.grad_cache_chunks:
            raise ValueError(f"train.grad_cache_chunks={self.train.grad_cache_chunks} must divide "
                             f"data.batch_size={self.data.batch_size} (equal chunks)")
        if self.eval.zero_shot and self.eval.classnames is None and self.data.source != "digits" \
                and self.data.task == "image_text":
            raise ValueError("eval.zero_shot=true needs eval.classnames (class names by label) unless "
                             "data.source=digits; or set eval.zero_shot=false")
        if self.model.text_tower is not None and self.data.task == "image_label":
            raise ValueError(f"model.text_tower={self.model.text_tower!r} has no use with data.task='image_label'")
        # A shortened run (train.steps=5 to try a recipe) keeps the recipe's other settings; what they no longer
        # do is said, not refused.
        if self.optim.warmup_steps > self.train.steps:
            warnings.warn(f"optim.warmup_steps={self.optim.warmup_steps} exceeds train.steps={self.train.steps}: the "
                          f"run ends inside the warmup, at {self.train.steps / self.optim.warmup_steps:.0%} of "
                          f"optim.lr", ConfigWarning, stacklevel=2)
        if self.eval.every > self.train.steps:
            warnings.warn(f"eval.every={self.eval.every} exceeds train.steps={self.train.steps}: evaluated only at "
                          f"the end", ConfigWarning, stacklevel=2)
        if self.checkpoint.every > self.train.steps:
            warnings.warn(f"checkpoint.every={self.checkpoint.every} exceeds train.steps={self.train.steps}: "
                          f"checkpointed only at the end", ConfigWarning, stacklevel=2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Config from a YAML file (or the defaults when path is None) with `key=value` overrides applied."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return section_from_dict(Config, apply_overrides(data, list(overrides)))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (it loads back to an equal Config)."""
    plain = yaml.safe_load(yaml.safe_dump(_plain(config.to_dict())))
    Path(path).write_text(yaml.safe_dump(plain, sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

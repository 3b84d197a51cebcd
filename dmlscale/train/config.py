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



def _components():
    """dmlscale.components, imported on first use: it loads torch, which `dmlscale train --help` must not."""
    from dmlscale import components

    return components


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
    num_workers: int = 0  # loader worker processes per rank; 0: the main process reads (same order as 1 worker)
    image_size: int = 32  # side of the square model input
    crop_scale: float = 1.0  # < 1: training images get a random resized crop of at least this area share
    shuffle_buffer: int = 1000  # samples held for shuffling
    # bad data, counted over all ranks, workers and epochs of the run (the same limit at any world size)
    max_skip_fraction: float = 0.1  # stop when more than this share of the samples read was unreadable
    skip_check_after: int = 1000  # ... once this many samples were read in all
    max_repeat_fraction: float = 0.05  # stop when more than this share of the trained samples were repeats
    missing_shards: Literal["error", "skip"] = "error"  # a listed shard absent on disk or not a tar
    m_per_class: int = 0  # > 0: class-balanced batches, m samples of each class in every global batch (image_label)

    def check(self) -> None:
        for name in ("batch_size", "eval_batch_size", "image_size", "shuffle_buffer", "skip_check_after"):
            self._require(getattr(self, name) >= 1, name, "an int >= 1")
        self._require(self.num_workers >= 0, "num_workers", "an int >= 0")
        self._require(0 < self.crop_scale <= 1, "crop_scale", "a number in (0, 1]")
        for name in ("max_skip_fraction", "max_repeat_fraction"):
            self._require(0 <= getattr(self, name) <= 1, name, "a number in [0, 1]")
        self._require(self.m_per_class >= 0, "m_per_class", "an int >= 0 (0: off)")
        if self.m_per_class:
            self._require(self.batch_size % self.m_per_class == 0, "m_per_class",
                          f"a divisor of data.batch_size={self.batch_size}")
            self._require(self.task == "image_label", "m_per_class",
                          f"0 with data.task={self.task!r} (class balance needs labels: data.task=image_label)")


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
class ComponentConfig(Section):
    """A library class by name with its constructor options: `{name: MultiSimilarityMiner, options: {epsilon: 0.1}}`."""

    name: str
    options: dict = dataclasses.field(default_factory=dict)  # checked against the class's signature

    def check(self) -> None:
        self._require(bool(self.name), "name", "a class name")


# The short names of earlier releases (kept for one release, with a warning) and the options they implied.
LEGACY_LOSSES = {"clip": ("ClipLoss", {}), "siglip": ("SigLipLoss", {}), "ntxent": ("NTXentLoss", {"temperature": 0.07}),
                 "supcon": ("SupConLoss", {"temperature": 0.07}), "triplet": ("TripletMarginLoss", {"margin": 0.2}),
                 "contrastive": ("ContrastiveLoss", {}), "multisimilarity": ("MultiSimilarityLoss", {})}
LEGACY_MINERS = {"batch_hard": ("BatchHardMiner", {}), "triplet_margin": ("TripletMarginMiner", {"margin": 0.2,
                 "type_of_triplets": "semihard"}), "multisimilarity": ("MultiSimilarityMiner", {}),
                 "pair_margin": ("PairMarginMiner", {})}
LEGACY_OPTIONS = ("temperature", "margin", "tiled")


@dataclasses.dataclass(kw_only=True)
class LossConfig(Section):
    """The training loss: any loss of dmlscale.losses by class name with its constructor options, an optional
    miner of dmlscale.miners, and a cross-batch memory. ClipLoss and SigLipLoss need data.task=image_text;
    every other loss takes labels (data.task=image_label)."""

    name: str = "ClipLoss"  # a class of dmlscale.losses
    options: dict = dataclasses.field(default_factory=dict)  # its constructor options; distance/reducer: {name, options}
    miner: ComponentConfig | str | None = None  # a class of dmlscale.miners (name or {name, options}); label losses
    memory_size: int = 0  # > 0: cross-batch memory of this many embeddings (label losses)
    sharded: bool = False  # class weights/proxies sharded by class over the ranks (components.SHARDED_LOSSES)
    # deprecated (one release): loss.options.temperature / loss.options.margin / loss.options.tiled instead
    temperature: float | None = None
    margin: float | None = None
    tiled: bool | None = None

    def check(self) -> None:
        self._require(self.memory_size >= 0, "memory_size", "an int >= 0")
        self._upgrade_legacy_keys()
        loss_cls = _components().resolve_class("loss", self.name, key="name")
        if not self.sharded:  # else checked against the sharded class, below
            _components().check_options(loss_cls, self.options, key="options", provided=("embedding_size",))
        if self.miner is not None:
            miner_cls = _components().resolve_class("miner", self.miner.name, key="miner.name")
            _components().check_options(miner_cls, self.miner.options, key="miner.options")
        if self.sharded:
            self._check_sharded()
        for key in ("miner", "memory_size"):
            if self.name in _components().IMAGE_TEXT_LOSSES and getattr(self, key):
                raise ValueError(f"{key}={getattr(self, key)!r} needs a label loss; name={self.name!r} takes "
                                 f"(image, text) pairs")
        if self.name in _components().VIEW_PAIR_LOSSES:
            raise ValueError(f"name={self.name!r} scores (embeddings, ref_emb) augmentation pairs; the trainer "
                             f"feeds (embeddings, labels) batches, so name one of its losses (options.loss) instead")
        if self.name == "MultipleLosses":
            if self.memory_size:
                raise ValueError(f"memory_size={self.memory_size} does not apply to MultipleLosses (the memory holds "
                                 "one loss); set memory_size=0")
            if self.miner is not None and self.options.get("miners"):
                raise ValueError("miner and options.miners both mine for MultipleLosses; give one of them")

    def _check_sharded(self) -> None:
        sharded_cls = _components().sharded_class(self.name, key="sharded")
        for key in ("miner", "memory_size"):
            if getattr(self, key):
                raise ValueError(f"{key}={getattr(self, key)!r} does not apply to sharded={self.sharded} (a "
                                 f"classification loss scores every sample against every class)")
        set_by_trainer = sorted(set(self.options) & set(_components().SHARDED_SET_BY_TRAINER))
        if set_by_trainer:
            raise ValueError(f"options.{set_by_trainer[0]} is set by the trainer for sharded=true; remove it")
        _components().check_options(sharded_cls, self.options, key="options", provided=("embedding_size",))

    def _upgrade_legacy_keys(self) -> None:
        """Earlier releases' keys, said once each and rewritten as the keys that replace them (an explicit
        loss.options entry wins over a deprecated key, which wins over what a short name implied)."""
        if isinstance(self.miner, str):
            if self.miner in LEGACY_MINERS:
                cls_name, implied = LEGACY_MINERS[self.miner]
                if "margin" in implied and self.margin is not None:
                    implied = {**implied, "margin": self.margin}
                spelled = (cls_name if not implied else f"{{name: {cls_name}, options: {{"
                           + ", ".join(f"{k}: {v}" for k, v in implied.items()) + "}}")
                warnings.warn(f"loss.miner={self.miner!r} is deprecated: use loss.miner={spelled}", ConfigWarning,
                              stacklevel=4)
                self.miner = ComponentConfig(name=cls_name, options=implied)
            else:
                self.miner = ComponentConfig(name=self.miner)
        cls_name, implied = LEGACY_LOSSES.get(self.name, (self.name, {}))
        accepted = _components().accepted_options(_components().resolve_class("loss", cls_name, key="name"))
        for key in LEGACY_OPTIONS:
            value = getattr(self, key)
            if value is None:
                continue
            setattr(self, key, None)
            if key in accepted:
                warnings.warn(f"loss.{key} is deprecated: use loss.options.{key}={value}", ConfigWarning,
                              stacklevel=4)
                self.options.setdefault(key, value)
            elif not (key == "margin" and self.miner is not None and self.miner.name == "TripletMarginMiner"):
                warnings.warn(f"loss.{key}={value} has no effect on {cls_name} (deprecated key; its options: "
                              f"{sorted(accepted)})", ConfigWarning, stacklevel=4)
        if self.name in LEGACY_LOSSES:
            warnings.warn(f"loss.name={self.name!r} is deprecated: use loss.name={cls_name}"
                          + "".join(f" loss.options.{k}={v}" for k, v in implied.items() if k not in self.options),
                          ConfigWarning, stacklevel=4)
            self.name, self.options = cls_name, {**implied, **self.options}


@dataclasses.dataclass(kw_only=True)
class OptimConfig(Section):
    """AdamW with linear warmup then cosine decay."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # applied to weights of rank >= 2 only
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables (the loss's own parameters are clipped apart)
    loss_lr: float | None = None  # peak rate of the loss's own parameters (class weights, proxies); null: lr
    loss_weight_decay: float = 0.0  # AdamW weight decay of the loss's own parameters

    def check(self) -> None:
        self._require(self.lr > 0, "lr", "a number > 0")
        self._require(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        self._require(self.eps > 0, "eps", "a number > 0")
        self._require(self.warmup_steps >= 0, "warmup_steps", "an int >= 0")
        self._require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]")
        self._require(self.grad_clip >= 0, "grad_clip", "a number >= 0")
        self._require(self.loss_lr is None or self.loss_lr > 0, "loss_lr", "null or a number > 0")
        self._require(self.loss_weight_decay >= 0, "loss_weight_decay", "a number >= 0")


@dataclasses.dataclass(kw_only=True)
class TrainConfig(Section):
    """The loop and the DeepSpeed engine."""

    steps: int = 300  # optimizer steps in total
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    grad_cache_chunks: int = 1  # > 1: gradient caching, the local batch encoded in this many chunks
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10
    threads: int = 0  # torch CPU threads per rank; 0: the cores this process may use (its affinity) / local ranks
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
        if (self.loss.name in _components().IMAGE_TEXT_LOSSES) != image_text:
            allowed = (list(_components().IMAGE_TEXT_LOSSES) if image_text
                       else sorted(set(_components().component_classes("loss")) - set(_components().IMAGE_TEXT_LOSSES)))
            raise ValueError(f"loss.name={self.loss.name!r} does not fit data.task={self.data.task!r}; "
                             f"allowed for that task: {allowed}")
        self._check_loss_builds()
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

    def _check_loss_builds(self) -> None:
        """Build the loss and miner once, so that a bad option value fails here, naming its key."""
        loss = self.loss
        if loss.sharded:  # options checked against the sharded class; its blocks are built by the ranks
            return
        _components().build_component("loss", {"name": loss.name, "options": loss.options}, key="loss",
                                      context={"embedding_size": self.model.embed_dim})
        if loss.miner is not None:
            _components().build_component("miner", dataclasses.asdict(loss.miner), key="loss.miner")

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

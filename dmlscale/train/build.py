"""Turn a Config into the run's parts: shards, model, tokenizer, image transform, loader and loss.

Each builder takes the section it needs, so the trainer reads as a list of steps. Nothing here
starts communication except `prepare_shards` (rank 0 writes the digits, the others wait).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import tarfile
from pathlib import Path

import torch

from dmlscale import components
from dmlscale.data import DIGIT_CLASSNAMES, HELDOUT_TEMPLATES, TRAIN_CAPTION_TEMPLATES
from dmlscale.data.pipeline import make_loader
from dmlscale.data.shard_list import read_sizes
from dmlscale.data.shards import describe_summary
from dmlscale.data.text_encoding import TextEncoder
from dmlscale.distributed import (DistributedClipLoss, DistributedCrossBatchMemory, DistributedLoss,
                                  DistributedSigLipLoss)
from dmlscale.losses import MultipleLosses
from dmlscale.memory import CrossBatchMemory
from dmlscale.models import build_model
from dmlscale.train.config import Config, DataConfig, LossConfig
from dmlscale.train.engine import build_engine

SIGLIP_INIT_LOGIT_SCALE = math.log(10)  # SigLIP's initialisation: t = 10, b = -10
SIGLIP_INIT_LOGIT_BIAS = -10.0


def split_shards(data: DataConfig, split: str) -> list[str]:
    """The shard files of `split` ("train" or "test"): the configured pattern, or every .tar in
    root/split together with every shard its sizes.json lists. A listed shard absent on disk is a
    ValueError naming it, or with data.missing_shards=skip kept in the list, so that the training
    loader counts its listed samples as skipped; evaluation, which reads every sample once and keeps no
    skip budget, leaves such shards (and files that are not tars) out with a warning."""
    pattern = data.train_shards if split == "train" else data.eval_shards
    if pattern is not None:
        return [pattern]
    folder = os.path.join(data.root, split)
    on_disk = sorted(glob.glob(os.path.join(folder, "*.tar")))
    listed = read_sizes(folder) if os.path.isdir(folder) else {}
    absent = sorted(os.path.join(folder, name) for name in listed
                    if name.endswith(".tar") and not os.path.isfile(os.path.join(folder, name)))
    if absent and data.missing_shards == "error":
        raise ValueError(f"{os.path.join(folder, 'sizes.json')} lists {len(absent)} shards absent on disk: "
                         f"{absent[:10]}; restore them, or set data.missing_shards=skip to count their samples "
                         f"as skipped")
    paths = sorted(on_disk + absent)
    if data.missing_shards == "skip" and split != "train":
        unusable = absent + [path for path in on_disk if not tarfile.is_tarfile(path)]
        if unusable:
            logging.getLogger("dmlscale.data").warning(
                "evaluation leaves out %d shards that are absent or not tars: %s", len(unusable), unusable[:10])
        paths = [path for path in paths if path not in unusable]
    if not paths:
        key = "data.train_shards" if split == "train" else "data.eval_shards"
        raise ValueError(f"no shards in {folder!r}; set data.root, {key}, or data.source=digits to write them")
    return paths


DIGITS_SAMPLES_PER_SHARD = 1000  # as `dmlscale shards --source digits` writes them


def prepare_shards(data: DataConfig, *, rank: int, barrier) -> None:
    """Write the digits shards under data.root unless both splits are complete (sizes.json present).
    The split and captions use the shards command's fixed seed, whatever the run's seed: the held-out
    digits stay the same for every run."""
    if data.source != "digits":
        return
    complete = all((Path(data.root) / split / "sizes.json").is_file() for split in ("train", "test"))
    if not complete and rank == 0:
        from dmlscale.data.digits import write_digits_shards  # scikit-learn's digits: only this recipe needs it

        for split, summary in write_digits_shards(data.root, samples_per_shard=DIGITS_SAMPLES_PER_SHARD,
                                                  image_size=data.image_size).items():
            print(f"dmlscale train: wrote the digits {split} shards: {describe_summary(summary)}")
    barrier()  # unconditionally: a rank that started late may already see the shards rank 0 just wrote


def model_family(config: Config) -> str:
    if config.data.task == "image_label":
        return "embedder"
    return "tower_clip" if config.model.text_tower is not None else "open_clip"


def build_run_model(config: Config) -> torch.nn.Module:
    """The model the registry builds for this config (same initial weights on every rank: same seed)."""
    model_config = config.model
    family = model_family(config)
    siglip = config.loss.name == "SigLipLoss"
    if family == "embedder":
        return build_model(family, model_config.name, embedding_dim=model_config.embed_dim or 128,
                           pretrained=model_config.pretrained)
    if family == "tower_clip":
        text_dir = None if model_config.text_tower == "minilm" else model_config.text_tower
        return build_model(family, model_config.name, text_tower_dir=text_dir, freeze_text=model_config.freeze_text,
                           init_logit_bias=SIGLIP_INIT_LOGIT_BIAS if siglip else None)
    options = {"init_logit_bias": SIGLIP_INIT_LOGIT_BIAS, "init_logit_scale": SIGLIP_INIT_LOGIT_SCALE} if siglip else {}
    model = build_model(family, model_config.name, pretrained=model_config.pretrained, **options)
    if model_config.freeze_text:
        for name, param in model.named_parameters():
            if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias"):
                param.requires_grad_(False)
    return model


class OpenClipTokenizer:
    """open_clip's BPE tokenizer at the model's context length; a class so loader workers can pickle it."""

    def __init__(self, context_length: int):
        self.context_length = context_length
        self._tokenizer = None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer(texts)

    def __getstate__(self) -> dict:
        return {"context_length": self.context_length, "_tokenizer": None}


def tokenizer_for(model: torch.nn.Module, *, context_length: int):
    """(tokenizer for the loader, context length): a transformers text tower's own tokenizer at
    `context_length`, else open_clip's at the model's context length."""
    text = getattr(model, "text", None)
    if hasattr(text, "tokenizer") and hasattr(text, "tokenize"):
        return text.tokenizer(), context_length
    context_length = int(getattr(model, "context_length", 77))
    return OpenClipTokenizer(context_length), context_length


def tokenize_fn(tokenizer, context_length: int):
    """list[str] -> token ids [B, L], as the loader makes them (for the zero-shot classifier)."""
    encoder = TextEncoder(tokenizer, context_length=context_length)
    return lambda texts: encoder(texts)["text"]


def image_transform(image_size: int, *, crop_scale: float = 1.0):
    """PIL image -> normalised C x H x W tensor: open_clip's eval preprocessing, or with crop_scale < 1 its
    training one (a random resized crop of at least that area share). Picklable, for loader workers."""
    import open_clip

    if crop_scale >= 1:
        return open_clip.image_transform(image_size, is_train=False)
    return open_clip.image_transform(image_size, is_train=True, aug_cfg={"scale": (crop_scale, 1.0)})


def build_loss(loss: LossConfig, *, embedding_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    """The distributed loss: every rank's rows against the global batch (exact on one process too). With
    loss.sharded, the class-sharded head: this rank's block of class weights, drawn from `seed` alone, so
    the initial matrix is the same at any world size."""
    if loss.sharded:
        if embedding_size is None:
            raise ValueError("loss.sharded needs the model's embedding size")
        sharded_cls = components.sharded_class(loss.name, key="loss.sharded")
        return sharded_cls(embedding_size=embedding_size, data_parallel=True, init_seed=seed, **loss.options)
    if loss.name in components.IMAGE_TEXT_LOSSES:
        distributed = {"ClipLoss": DistributedClipLoss, "SigLipLoss": DistributedSigLipLoss}[loss.name]
        components.check_options(components.resolve_class("loss", loss.name, key="loss.name"), loss.options,
                                 key="loss.options")
        return distributed(**loss.options)
    context = {} if embedding_size is None else {"embedding_size": embedding_size}
    pure = components.build_component("loss", {"name": loss.name, "options": loss.options}, key="loss",
                                      context=context)
    miner = None
    if loss.miner is not None:
        miner = components.build_component("miner", {"name": loss.miner.name, "options": loss.miner.options},
                                           key="loss.miner")
    if isinstance(pure, MultipleLosses):
        return distribute_each(pure, miner)
    if loss.memory_size:
        if embedding_size is None:
            raise ValueError("loss.memory_size needs the model's embedding size")
        memory = CrossBatchMemory(pure, embedding_size, memory_size=loss.memory_size, miner=miner)
        return DistributedCrossBatchMemory(memory)
    return DistributedLoss(pure, miner=miner)


def distribute_each(combined: MultipleLosses, miner: torch.nn.Module | None) -> MultipleLosses:
    """The same MultipleLosses (weights, order) with each loss in a DistributedLoss that holds its miner (its
    own, else the recipe's loss.miner), so every loss and miner sees the global batch."""
    keys = list(combined.losses.keys()) if combined.is_dict else list(range(len(combined.losses)))
    wrapped = []
    for key in keys:
        has_own = combined.miners is not None and (key in combined.miners if combined.is_dict
                                                   else combined.miners[key] is not None)
        where = f"loss.options.losses.{key}" if combined.is_dict else f"loss.options.losses[{key}]"
        try:
            wrapped.append(DistributedLoss(combined.losses[key], miner=combined.miners[key] if has_own else miner))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    losses = dict(zip(keys, wrapped)) if combined.is_dict else wrapped
    return MultipleLosses(losses, weights=combined.weights)


def make_train_loader(config: Config, rank: int, world_size: int, transform, tokenizer, context_length: int):
    """The training loader: every sample once per epoch (at most once with data.m_per_class, whose batches
    hold m samples of each of their classes), equal batch counts on every rank. Its skip
    fraction is checked by the trainer on the totals of all ranks (local_skip_check=False), so the
    same data stops a run at any world size."""
    data = config.data
    if data.m_per_class:  # class-balanced: m of each class in every global batch, read by random access
        return make_loader(split_shards(data, "train"), m_per_class=data.m_per_class, batch_size=data.batch_size,
                           rank=rank, world_size=world_size, num_workers=data.num_workers, seed=config.seed,
                           task=data.task, image_transform=transform, max_skip_fraction=data.max_skip_fraction,
                           skip_check_after=data.skip_check_after, missing_shards=data.missing_shards,
                           local_skip_check=False)
    return make_loader(split_shards(data, "train"), batch_size=data.batch_size, rank=rank, world_size=world_size,
                       num_workers=data.num_workers, seed=config.seed, mode="epoch", task=data.task,
                       image_transform=transform, tokenizer=tokenizer, context_length=context_length or 77,
                       shuffle_buffer=data.shuffle_buffer, max_skip_fraction=data.max_skip_fraction,
                       skip_check_after=data.skip_check_after, missing_shards=data.missing_shards,
                       local_skip_check=False)


def build_run_engine(config: Config, model: torch.nn.Module, device: torch.device, *, local_rank: int):
    """The DeepSpeed engine; gradient-caching chunks are its micro-batches."""
    # DeepSpeed insists on LOCAL_RANK, which only torchrun sets; a single process or an srun task has its
    # local rank from world_info_from_env.
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    optim, train = config.optim, config.train
    return build_engine(model.to(device), zero_stage=train.zero_stage, precision=train.precision, lr=optim.lr,
                        weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps,
                        gradient_clipping=optim.grad_clip, warmup_steps=optim.warmup_steps, total_steps=train.steps,
                        min_lr_ratio=optim.min_lr_ratio,
                        micro_batch_size=config.data.batch_size // train.grad_cache_chunks,
                        grad_accum_steps=train.grad_cache_chunks)


def zero_shot_classnames(config: Config) -> list[str] | None:
    """Class names by label for the zero-shot classifier (None: no zero-shot evaluation)."""
    if not config.eval.zero_shot or config.data.task != "image_text":
        return None
    if config.eval.classnames is not None:
        return config.eval.classnames
    if config.data.source == "digits":
        return list(DIGIT_CLASSNAMES)
    return None


def zero_shot_templates(config: Config) -> list[str]:
    """eval.templates resolved: the digits' held-out or training templates, both, or the given list."""
    chosen = config.eval.templates
    if isinstance(chosen, list):
        return chosen
    return {"heldout": list(HELDOUT_TEMPLATES), "train": list(TRAIN_CAPTION_TEMPLATES),
            "both": list(TRAIN_CAPTION_TEMPLATES) + list(HELDOUT_TEMPLATES)}[chosen]

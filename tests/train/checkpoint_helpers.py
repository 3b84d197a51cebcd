"""Engines and training steps shared by the checkpoint tests (real DeepSpeed engines on the CPU)."""

from __future__ import annotations

import torch

from dmlscale.distributed import DistributedClipLoss
from dmlscale.train.engine import build_engine, engine_contrastive_step
from tests.train.helpers import MICRO_BATCH, batch_source, clip_forward, clip_loss_fn, tiny_clip

NUM_CHUNKS = 2


def small_engine(zero_stage: int, seed: int = 0, *, patch_dropout: float = 0.0):
    return build_engine(tiny_clip(seed, patch_dropout=patch_dropout), zero_stage=zero_stage, precision="fp32",
                        lr=1e-3, weight_decay=0.1, gradient_clipping=1.0, warmup_steps=1, total_steps=10,
                        micro_batch_size=MICRO_BATCH, grad_accum_steps=NUM_CHUNKS)


def train_steps(engine, rank: int, steps: range) -> None:
    loss_fn = clip_loss_fn(DistributedClipLoss())
    for step in steps:
        engine_contrastive_step(engine, batch_source(step, rank, NUM_CHUNKS), clip_forward(engine), loss_fn)


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)

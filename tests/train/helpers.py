"""Shared pieces of the train tests: a tiny open_clip CLIP with patch dropout, deterministic batches.

`batch_source(step, rank, num_chunks)` is the one place batches come from; swap it for a real shard
loader to run the same tests on shards.
"""

from __future__ import annotations

import torch
from open_clip.transformer import PatchDropout

from dmlscale.models import build_open_clip

MICRO_BATCH = 3


def tiny_clip(seed: int = 0, patch_dropout: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_open_clip("dml-tiny-vit")
    if patch_dropout:
        model.visual.patch_dropout = PatchDropout(patch_dropout)
    return model.train()


def batch_source(step: int, rank: int, num_chunks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's chunks (images [n, 3, 32, 32], token ids [n, 16]) for optimizer step `step`."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    chunks = []
    for _ in range(num_chunks):
        images = torch.randn(MICRO_BATCH, 3, 32, 32, generator=gen)
        texts = torch.randint(1, 1000, (MICRO_BATCH, 16), generator=gen)
        chunks.append((images, texts))
    return chunks


def clip_forward(engine_or_model):
    return lambda chunk: engine_or_model(image=chunk[0], text=chunk[1])


def clip_loss_fn(loss_module):
    return lambda out: loss_module(out["image_features"], out["text_features"], out["logit_scale"])


def full_params(engine) -> dict[str, torch.Tensor]:
    """Every parameter of the engine's module, gathered when ZeRO-3 partitions them."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=engine.zero_optimization_stage() == 3):
        return {name: p.detach().clone().float() for name, p in params.items()}

"""Gradient caching equals one step on the whole batch: gradients and the AdamW update, float64.

Legend: N rows in the local batch, K chunks. The model is a real tiny open_clip ViT with patch dropout
(random per forward), so the cached re-forward must restore each chunk's RNG state to match.
"""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.loss import ClipLoss as OpenClipLoss
from open_clip.transformer import PatchDropout

from dmlscale.models import build_open_clip
from dmlscale.train.step import cached_step
from tests.distributed.launch import results, run_world

TOL = 1e-10


def tiny_clip(patch_dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_open_clip("dml-tiny-vit")
    if patch_dropout:
        model.visual.patch_dropout = PatchDropout(patch_dropout)
    return model.double().train()


def make_batch(seed: int, num_rows: int):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(num_rows, 3, 32, 32, generator=gen, dtype=torch.float64)
    texts = torch.randint(1, 1000, (num_rows, 16), generator=gen)
    return images, texts


def split(batch, sizes):
    images, texts = batch
    return list(zip(images.split(sizes), texts.split(sizes)))


def forward_fn(model):
    return lambda chunk: model(image=chunk[0], text=chunk[1])


def clip_loss(outputs):
    return OpenClipLoss()(outputs["image_features"], outputs["text_features"], outputs["logit_scale"])


def grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def adamw_update(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def reference_graph_step(model, chunks, rng_seed: int):
    """Forward every chunk with its graph kept, one loss on the concatenation, one backward."""
    torch.manual_seed(rng_seed)
    outs = [model(image=c[0], text=c[1]) for c in chunks]
    full = {"image_features": torch.cat([o["image_features"] for o in outs]),
            "text_features": torch.cat([o["text_features"] for o in outs]),
            "logit_scale": outs[0]["logit_scale"]}
    loss = clip_loss(full)
    loss.backward()
    return loss.detach()


def max_diff(left: dict, right: dict) -> float:
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


@pytest.mark.parametrize("sizes", [[3, 3, 2]])  # unequal chunks
def test_cached_step_equals_full_graph_with_patch_dropout(sizes):
    batch = make_batch(1, sum(sizes))
    cached_model = tiny_clip(patch_dropout=0.5)
    reference_model = copy.deepcopy(cached_model)
    torch.manual_seed(123)
    loss = cached_step(forward_fn(cached_model), split(batch, sizes), clip_loss)
    reference_loss = reference_graph_step(reference_model, split(batch, sizes), rng_seed=123)
    assert abs(loss.item() - reference_loss.item()) < TOL
    got, want = grads(cached_model), grads(reference_model)
    assert "logit_scale" in got and len(got) == len(list(cached_model.parameters()))
    assert max_diff(got, want) < TOL
    assert max_diff(adamw_update(cached_model), adamw_update(reference_model)) < TOL

    # control: patch dropout draws matter, so a different RNG start gives other gradients
    other_model = copy.deepcopy(reference_model)
    other_model.zero_grad()
    reference_graph_step(other_model, split(batch, sizes), rng_seed=124)
    assert max_diff(grads(other_model), want) > 1e-6


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_cached_step_equals_one_forward_on_whole_batch(grad_checkpointing):
    sizes = [2, 3, 3]
    batch = make_batch(2, sum(sizes))
    cached_model = tiny_clip(patch_dropout=0.0)
    whole_model = copy.deepcopy(cached_model)
    cached_model.set_grad_checkpointing(grad_checkpointing)  # activation checkpointing composes with the cache
    cached_step(forward_fn(cached_model), split(batch, sizes), clip_loss)
    clip_loss(whole_model(image=batch[0], text=batch[1])).backward()
    assert max_diff(grads(cached_model), grads(whole_model)) < TOL
    assert max_diff(adamw_update(cached_model), adamw_update(whole_model)) < TOL


def test_cached_step_rejects_empty_and_rowless_outputs():
    model = tiny_clip(patch_dropout=0.0)
    with pytest.raises(ValueError, match="empty"):
        cached_step(forward_fn(model), [], clip_loss)
    only_scale = lambda chunk: {"logit_scale": model.logit_scale.exp()}  # noqa: E731
    with pytest.raises(ValueError, match="only shared outputs"):
        cached_step(only_scale, [None, None], lambda out: out["logit_scale"].sum())


def _distributed_cached_grads(rank, world_size, sizes_per_rank):
    from dmlscale.distributed import DistributedClipLoss

    model = tiny_clip(patch_dropout=0.0)
    sizes = sizes_per_rank[rank]
    start = sum(sum(s) for s in sizes_per_rank[:rank])
    images, texts = make_batch(3, sum(sum(s) for s in sizes_per_rank))
    local = (images[start:start + sum(sizes)], texts[start:start + sum(sizes)])
    loss_fn = DistributedClipLoss()
    loss = cached_step(forward_fn(model), split(local, sizes),
                       lambda out: loss_fn(out["image_features"], out["text_features"], out["logit_scale"]))
    averaged = {}
    for name, param in model.named_parameters():
        grad = param.grad.detach().clone()
        torch.distributed.all_reduce(grad)  # the data-parallel average DDP / DeepSpeed would do
        averaged[name] = grad / world_size
    return loss.item(), averaged


def test_distributed_cached_step_equals_one_process_on_full_batch():
    sizes_per_rank = [[3, 2], [2, 2, 1]]  # unequal local batches and chunk counts
    outcomes = results(run_world(_distributed_cached_grads, 2, sizes_per_rank))
    model = tiny_clip(patch_dropout=0.0)
    images, texts = make_batch(3, 10)
    reference_loss = clip_loss(model(image=images, text=texts))
    reference_loss.backward()
    want = grads(model)
    for loss, got in outcomes:
        assert abs(loss - reference_loss.item()) < TOL
        assert max_diff(got, want) < TOL

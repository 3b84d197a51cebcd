"""The DeepSpeed engine against a hand-written torch loop: param groups, clipping, schedule, clamp.

The reference is plain torch: one forward on the whole batch, open_clip's ClipLoss, clip_grad_norm_,
AdamW with the same two groups, the hand formula of the schedule. The engine runs gradient caching
over 2 micro-batches through DeepSpeed's accumulation, in a real spawned 1-rank gloo world.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from open_clip.loss import ClipLoss as OpenClipLoss

from dmlscale.models import build_open_clip
from dmlscale.train import checkpoint
from dmlscale.train.engine import deepspeed_config, param_groups
from dmlscale.train.export import OPEN_CLIP_WEIGHTS, export_weights
from dmlscale.train.schedule import cosine_factor
from tests.distributed.launch import results, run_world
from tests.train.helpers import MICRO_BATCH, batch_source, clip_forward, full_params, tiny_clip

LR, WEIGHT_DECAY, CLIP_NORM, WARMUP, TOTAL = 1e-2, 0.2, 0.05, 1, 4


def test_no_weight_decay_on_biases_norms_logit_params_and_embeddings():
    model = tiny_clip(patch_dropout=0.0)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | undecayed == set(names.values()) and not decayed & undecayed
    for name in undecayed:
        assert name.endswith("bias") or "ln" in name or "logit" in name or "embed" in name, name
    for expected in ("logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding",
                     "visual.ln_pre.weight", "ln_final.bias", "transformer.resblocks.0.attn.in_proj_bias"):
        assert expected in undecayed
    for expected in ("transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight", "text_projection"):
        assert expected in decayed


def test_config_sets_clipping_explicitly_and_rejects_bad_values():
    config = deepspeed_config(zero_stage=2, precision="fp32", gradient_clipping=0.0, micro_batch_size=4,
                              grad_accum_steps=3)
    assert config["gradient_clipping"] == 0.0 and config["gradient_accumulation_steps"] == 3
    assert config["zero_optimization"] == {"stage": 2} and config["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(zero_stage=4, precision="fp32", gradient_clipping=1.0, micro_batch_size=1, grad_accum_steps=1)
    with pytest.raises(ValueError, match="'fp16'"):
        deepspeed_config(zero_stage=0, precision="fp16", gradient_clipping=1.0, micro_batch_size=1, grad_accum_steps=1)
    with pytest.raises(ValueError, match="gradient_clipping"):
        deepspeed_config(zero_stage=0, precision="fp32", gradient_clipping=-1, micro_batch_size=1, grad_accum_steps=1)


def test_cosine_schedule_hand_values():
    factors = [cosine_factor(s, warmup_steps=2, total_steps=6) for s in range(7)]
    want = [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]
    assert max(abs(a - b) for a, b in zip(factors, want)) < 1e-12
    assert cosine_factor(10, warmup_steps=0, total_steps=4, min_lr_ratio=0.1) == pytest.approx(0.1)
    # a run shorter than its warmup ends on the ramp
    assert [cosine_factor(s, warmup_steps=5, total_steps=4) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError, match="total_steps >= 1"):
        cosine_factor(0, warmup_steps=0, total_steps=0)


def _reference_run(model, steps: int):
    """Plain torch: whole-batch forward, ClipLoss, clip_grad_norm_, AdamW groups, the schedule formula."""
    groups = param_groups(model, WEIGHT_DECAY)
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.98), eps=1e-6)
    norms = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = LR * cosine_factor(step, warmup_steps=WARMUP, total_steps=TOTAL)
        chunks = batch_source(step, 0, 2)
        out = model(image=torch.cat([c[0] for c in chunks]), text=torch.cat([c[1] for c in chunks]))
        OpenClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM).item())
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return {name: p.detach().clone() for name, p in model.named_parameters()}, norms


def _engine_vs_reference(rank, world_size, zero_stage, init_logit_scale, run_dir):
    from deepspeed.utils import safe_get_full_fp32_param

    from dmlscale.distributed import DistributedClipLoss
    from dmlscale.train.engine import build_engine, engine_contrastive_step

    model = tiny_clip(patch_dropout=0.0)
    with torch.no_grad():
        model.logit_scale.fill_(init_logit_scale)
    reference, norms = _reference_run(copy.deepcopy(model), steps=2)
    engine = build_engine(model, zero_stage=zero_stage, precision="fp32", lr=LR, weight_decay=WEIGHT_DECAY,
                          gradient_clipping=CLIP_NORM, warmup_steps=WARMUP, total_steps=TOTAL,
                          micro_batch_size=MICRO_BATCH, grad_accum_steps=2)
    loss_fn = DistributedClipLoss()
    for step in range(2):
        engine_contrastive_step(engine, batch_source(step, 0, 2), clip_forward(engine),
                                lambda out: loss_fn(out["image_features"], out["text_features"], out["logit_scale"]))
    got = full_params(engine)
    checkpoint.save(engine, run_dir, 2)
    master = safe_get_full_fp32_param(engine.module.logit_scale)
    return {"max_diff": max((got[n] - reference[n]).abs().max().item() for n in reference),
            "logit_scale": got["logit_scale"].item(), "master_logit_scale": None if master is None else master.item(),
            "reference_grad_norms": norms, "params": got}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_engine_step_equals_plain_torch_with_clipping_and_clamp(zero_stage, tmp_path):
    # the scale starts above ln(100): both loops must clamp it, the engine also in its fp32 master copy
    (outcome,) = results(run_world(_engine_vs_reference, 1, zero_stage, 4.7, tmp_path))
    print({k: v for k, v in outcome.items() if k != "params"})
    assert min(outcome["reference_grad_norms"]) > 2 * CLIP_NORM  # clipping was active in both steps
    # fp32: chunked vs whole-batch summation order, and torch's thread count changes it too; AdamW divides by the
    # root of the squared gradient, so the rounding of a near-zero gradient can move a weight by a share of lr
    assert outcome["max_diff"] < 5e-3 * LR, outcome
    assert outcome["logit_scale"] <= math.log(100) + 1e-6
    if zero_stage > 0:  # the optimizer's fp32 master copy was clamped too, not only the module tensor
        assert outcome["master_logit_scale"] == pytest.approx(outcome["logit_scale"], abs=1e-7)

    # the exported weights load through our own builder (open_clip's loader underneath)
    weights = export_weights(tmp_path, tmp_path / "export") / OPEN_CLIP_WEIGHTS
    loaded = build_open_clip("dml-tiny-vit", pretrained=str(weights)).state_dict()
    assert max((loaded[n] - p).abs().max().item() for n, p in outcome["params"].items()) == 0.0

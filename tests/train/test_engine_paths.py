"""The engine's overhead cuts (dmlscale/train/engine_paths.py) change no numbers that matter.

The reference for the AdamW kernels is torch's single-tensor AdamW under the same DeepSpeed engine, at ZeRO
0-3 on 2 real gloo ranks (unequal rows, so the reduction matters); the reference for the skipped one-rank
all-reduce is DeepSpeed's own path with it; resuming a checkpoint written by one implementation keeps the
one the engine was built with.
"""

from __future__ import annotations

import pytest
import torch

from dmlscale.train.engine_paths import adamw_options, fused_adamw_supported
from tests.distributed.launch import results, run_world
from tests.train.helpers import batch_source, clip_forward, full_params, tiny_clip

LR, STEPS = 1e-2, 2


def test_adamw_options_pick_fused_where_torch_has_it_and_reject_unknown_names():
    params = [torch.nn.Parameter(torch.zeros(2))]
    cpu_fused = fused_adamw_supported(torch.device("cpu"))
    assert adamw_options("auto", params) == {"fused": cpu_fused, "foreach": not cpu_fused}
    assert adamw_options("single_tensor", params) == {"fused": False, "foreach": False}
    assert adamw_options("foreach", params) == {"fused": False, "foreach": True}
    with pytest.raises(ValueError, match="'multi'"):
        adamw_options("multi", params)


def _train(zero_stage: int, rank: int, *, steps: int = STEPS, **engine_options):
    from dmlscale.distributed import DistributedClipLoss
    from dmlscale.train.engine import build_engine, engine_contrastive_step

    engine = build_engine(tiny_clip(patch_dropout=0.0), zero_stage=zero_stage, precision="fp32", lr=LR,
                          weight_decay=0.1, gradient_clipping=0.05, warmup_steps=1, total_steps=4,
                          micro_batch_size=2 + rank, grad_accum_steps=1, **engine_options)
    loss_fn = DistributedClipLoss()
    for step in range(steps):
        chunk = batch_source(step, rank, 1)[0]
        chunk = (chunk[0][:2 + rank], chunk[1][:2 + rank])  # 2 rows on rank 0, 3 on rank 1
        engine_contrastive_step(engine, [chunk], clip_forward(engine),
                                lambda out: loss_fn(out["image_features"], out["text_features"], out["logit_scale"]))
    return engine


def _max_diff(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def _implementations_agree(rank, world_size, run_dir):
    from dmlscale.train import checkpoint

    initial = {name: p.detach().clone() for name, p in tiny_clip(patch_dropout=0.0).named_parameters()}
    out = {}
    for zero_stage in (0, 1, 2, 3):
        single = _train(zero_stage, rank, adamw_implementation="single_tensor")
        reference = full_params(single)
        for implementation in ("auto", "foreach") if zero_stage == 0 else ("auto",):
            engine = _train(zero_stage, rank, adamw_implementation=implementation)
            groups = engine.dmlscale_base_optimizer.param_groups
            out[(zero_stage, implementation)] = {
                "max_diff": _max_diff(full_params(engine), reference),
                "moved": _max_diff(full_params(engine), initial),
                "fused": all(g["fused"] for g in groups), "foreach": all(g["foreach"] for g in groups)}
        if zero_stage == 2:  # a checkpoint of the single-tensor engine, resumed by a fused one
            checkpoint.save(single, run_dir / f"zero{zero_stage}", STEPS)
            engine = _train(zero_stage, rank, steps=0, adamw_implementation="fused")
            checkpoint.load(engine, run_dir / f"zero{zero_stage}")
            groups = engine.dmlscale_base_optimizer.param_groups
            out[(zero_stage, "resumed")] = {"fused": all(g["fused"] and not g["foreach"] for g in groups),
                                            "max_diff": _max_diff(full_params(engine), reference)}
    return out


@pytest.mark.slow
def test_fused_and_foreach_adamw_equal_the_single_tensor_path_at_every_zero_stage(tmp_path):
    outcomes = results(run_world(_implementations_agree, 2, tmp_path))
    for outcome in outcomes:
        print(outcome)
        for (zero_stage, implementation), got in outcome.items():
            if implementation == "resumed":
                assert got["fused"] and got["max_diff"] == 0.0, (zero_stage, got)
                continue
            assert got["moved"] > LR  # the steps changed the weights ...
            # ... and the kernels agree to fp32 rounding (the same formula): the first step leaves the weights an
            # ulp or so apart, the second step's gradients at those weights move them a few ulps (7e-5 lr measured)
            assert got["max_diff"] < 2e-4 * LR, (zero_stage, implementation, got)
            want_fused = implementation == "auto" and fused_adamw_supported(torch.device("cpu"))
            assert got["fused"] == want_fused and got["foreach"] == (implementation == "foreach" or not want_fused)


def _with_and_without_allreduce(rank, world_size):
    skipping = _train(0, rank)
    reducing = _train(0, rank, skip_single_rank_allreduce=False)
    return {"skipped": not skipping.enable_backward_allreduce,
            "max_diff": _max_diff(full_params(skipping), full_params(reducing)),
            "params": full_params(skipping)}


def test_one_rank_skips_the_allreduce_bit_for_bit_and_two_ranks_still_reduce():
    (one,) = results(run_world(_with_and_without_allreduce, 1))
    assert one["skipped"] and one["max_diff"] == 0.0
    first, second = results(run_world(_with_and_without_allreduce, 2))
    assert not first["skipped"] and not second["skipped"]
    # each rank saw different rows: only the reduction makes their weights equal (and the same as DeepSpeed's)
    assert first["max_diff"] == second["max_diff"] == 0.0
    assert _max_diff(first["params"], second["params"]) == 0.0

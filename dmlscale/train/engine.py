"""The DeepSpeed engine: config from our arguments, AdamW param groups, cosine schedule, gradient caching.

deepspeed is imported lazily here (through deepspeed_quiet.py, which filters its start-up lines) and nowhere
else in the library's import path. On the CPU, DeepSpeed's
first initialisation compiles its shared-memory comm op (about a minute on 2 cores, cached afterwards in
~/.cache/torch_extensions); passing a torch AdamW avoids compiling DeepSpeed's fused / CPU Adam.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from dmlscale.distributed.env import ensure_process_group
from dmlscale.models.clip import MAX_LOGIT_SCALE
from dmlscale.param_checks import check_positive_int, check_real
from dmlscale.train import engine_paths
from dmlscale.train.schedule import cosine_with_warmup
from dmlscale.train.step import cached_step

PRECISIONS = ("fp32", "bf16", "auto")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm)


def is_no_decay(name: str, param: torch.Tensor, norm_param_ids: set[int]) -> bool:
    """Biases, norm weights, 1-d tensors (logit scale / bias, class tokens) and embeddings get no decay."""
    return (param.ndim < 2 or id(param) in norm_param_ids or name.endswith("bias") or "logit_" in name
            or "embed" in name.lower())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed weights and the no-decay rest."""
    norm_param_ids = {id(p) for module in model.modules() if isinstance(module, NORM_TYPES)
                      for p in module.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param, norm_param_ids) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r} (no fp16: DeepSpeed has no "
                         f"fp16 on the CPU and bf16 is the GPU choice)")
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def deepspeed_config(*, zero_stage: int, precision: str, gradient_clipping: float, micro_batch_size: int,
                     grad_accum_steps: int) -> dict:
    """The DeepSpeed JSON config; gradient_clipping is always explicit (DeepSpeed's default is 1.0)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    check_real("deepspeed config", "gradient_clipping", gradient_clipping, minimum=0)
    check_positive_int("deepspeed config", "micro_batch_size", micro_batch_size)
    check_positive_int("deepspeed config", "grad_accum_steps", grad_accum_steps)
    precision = resolve_precision(precision)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(gradient_clipping),  # 0 disables clipping
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our optimizer is torch.optim.AdamW
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, *, zero_stage: int = 2, precision: str = "auto", lr: float = 5e-4,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 gradient_clipping: float = 1.0, warmup_steps: int = 0, total_steps: int = 1,
                 min_lr_ratio: float = 0.0, micro_batch_size: int = 1, grad_accum_steps: int = 1,
                 local_rank: int | None = None, extra_config: dict | None = None, adamw_implementation: str = "auto",
                 skip_single_rank_allreduce: bool = True, record_grad_norm: bool = True):
    """deepspeed.initialize on `model` with torch AdamW (no decay on biases, norms, logit scale/bias,
    embeddings) and a warmup + cosine schedule stepped once per optimizer step. Joins the existing
    torch.distributed group (or makes a 1-rank gloo group); `local_rank` fills LOCAL_RANK when the
    launcher did not (default: the global rank, i.e. one node). Returns the DeepSpeedEngine.

    The last three arguments cut DeepSpeed's per-step overhead (engine_paths.py); each False or
    "single_tensor" selects DeepSpeed's and torch's own behaviour. `adamw_implementation`: "auto" (fused
    where torch has the kernel for the device, else foreach), "fused", "foreach" or "single_tensor".
    `skip_single_rank_allreduce`: no gradient all-reduce over one rank under ZeRO-0. `record_grad_norm`:
    under ZeRO-0 fp32, one multi-tensor norm both clips and is engine.get_global_grad_norm().

    The contrastive batch per optimizer step is micro_batch_size x grad_accum_steps x world size;
    `engine_contrastive_step` computes its loss at once with gradient caching.
    """
    from dmlscale.train.deepspeed_quiet import deepspeed, without_startup_prints

    check_real("build_engine", "lr", lr, minimum=0)
    check_real("build_engine", "weight_decay", weight_decay, minimum=0)
    check_real("build_engine", "eps", eps, minimum=0, strict=True)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"build_engine: betas must be two numbers in [0, 1), got {betas!r}")
    config = deepspeed_config(zero_stage=zero_stage, precision=precision, gradient_clipping=gradient_clipping,
                              micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps)
    config.update(extra_config or {})
    ensure_process_group(local_rank)
    groups = param_groups(model, weight_decay)
    options = engine_paths.adamw_options(adamw_implementation, (p for group in groups for p in group["params"]))
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **options)
    engine_paths.keep_implementation_on_load(optimizer, options)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=warmup_steps, total_steps=total_steps,
                                   min_lr_ratio=min_lr_ratio)
    with without_startup_prints():  # its comm backend prints "... shm_comm_op built successfully"
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=config, dist_init_required=False)
    engine.dmlscale_base_optimizer = optimizer  # the torch AdamW DeepSpeed steps, under any ZeRO wrapper
    if skip_single_rank_allreduce:
        engine_paths.skip_single_rank_allreduce(engine)
    engine.dmlscale_records_grad_norm = record_grad_norm and engine_paths.record_grad_norm(engine)
    return engine


def engine_contrastive_step(engine, chunks: Sequence, forward_fn: Callable, loss_fn: Callable,
                            *, shared_keys: Sequence[str] = ("logit_scale", "logit_bias"),
                            before_update: Callable[[], None] | None = None) -> torch.Tensor:
    """One optimizer step over `chunks` (grad_accum_steps micro-batches) with gradient caching.

    DeepSpeed's own accumulation carries it: each chunk's re-forward ends in
    engine.backward(surrogate, scale_wrt_gas=False) and engine.step(); the engine accumulates, reduces
    across ranks, clips and steps at the accumulation boundary (the last chunk). The surrogate
    sum(output * cached_grad) has exactly the cached gradient, so nothing is rescaled. Under bf16 the
    chunks' floating tensors are cast to bf16 and the loss sees fp32 outputs. `before_update()` runs just
    before the engine step of the last chunk (where the optimizer steps), e.g. the non-finite guard's
    collective decision. Returns the loss.
    """
    if len(chunks) != engine.gradient_accumulation_steps():
        raise ValueError(f"engine_contrastive_step: got {len(chunks)} chunks, but the engine accumulates "
                         f"{engine.gradient_accumulation_steps()} micro-batches per step")
    if engine.bfloat16_enabled():  # DeepSpeed casts the module, not its inputs; the loss runs in fp32
        bf16_forward, fp32_loss = forward_fn, loss_fn
        forward_fn = lambda chunk: bf16_forward(cast_floats(chunk, torch.bfloat16))  # noqa: E731
        loss_fn = lambda outputs: fp32_loss(cast_floats(outputs, torch.float32))  # noqa: E731
    done = [0]

    def after_chunk() -> None:
        done[0] += 1
        if before_update is not None and done[0] == len(chunks):
            before_update()
        engine.step()
    loss = cached_step(forward_fn, chunks, loss_fn, shared_keys=shared_keys,
                       backward=lambda surrogate: engine.backward(surrogate, scale_wrt_gas=False),
                       after_chunk=after_chunk)
    if engine.module is not None and getattr(engine.module, "logit_scale", None) is not None:
        # in the module tensor and in DeepSpeed's fp32 master copy, which would undo a module-only clamp
        clamp_parameter(engine.module.logit_scale, 0.0, MAX_LOGIT_SCALE)
    return loss


def cast_floats(data, dtype: torch.dtype):
    """`data` (tensor, or tuple / list / dict of them) with floating tensors cast to `dtype`."""
    if isinstance(data, torch.Tensor):
        return data.to(dtype) if data.is_floating_point() else data
    if isinstance(data, dict):
        return {key: cast_floats(value, dtype) for key, value in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(cast_floats(value, dtype) for value in data)
    return data


def clamp_parameter(param: torch.Tensor, low: float, high: float) -> None:
    """Clamp a parameter in place everywhere it lives: the module tensor and DeepSpeed's fp32 master
    copy (ZeRO 1-3, bf16). Collective under ZeRO-3: call on every rank."""
    if not (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
        with torch.no_grad():
            param.clamp_(low, high)
        return
    from dmlscale.train.deepspeed_quiet import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    full = safe_get_full_fp32_param(param)
    if full is None:
        return
    clamped = full.clamp(low, high)
    if hasattr(param, "ds_id"):  # ZeRO-3: the module tensor is a partition; gather, modify, re-partition
        _set_zero3_fp32_partition(param, clamped)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            param.copy_(clamped.to(param.dtype))
    else:
        safe_set_full_fp32_param(param, clamped)
        with torch.no_grad():
            param.copy_(clamped.to(param.dtype))


def _set_zero3_fp32_partition(param: torch.Tensor, value: torch.Tensor) -> None:
    """This rank's slice of `value` into ZeRO-3's fp32 partition. deepspeed 0.19's
    safe_set_full_fp32_param fails when a parameter has fewer elements than ranks (the shape-[1] logit
    scale): its padded partitions run past the value, so the padding is skipped here."""
    optimizer = param._z3_optimizer
    partition, _ = optimizer._get_fp32_opt_state_partition(param, release_swap_buffers=False)
    start = partition.numel() * optimizer._get_param_partition_rank(param)
    count = max(0, min(partition.numel(), value.numel() - start))
    if count:
        partition.data[:count].copy_(value.flatten()[start:start + count].to(partition.dtype))

"""Where dmlscale's DeepSpeed step leaves DeepSpeed's defaults, to cut per-step overhead (issue 14).

Each change has a switch in `build_engine`, so that benchmarks/engine_overhead.py can select DeepSpeed's
own behaviour and measure what each one costs:

- AdamW: torch's single-tensor loop, its CPU default, was 14% of a quickstart step. "auto" takes torch's
  fused kernel where torch has one for the parameters' device, else the multi-tensor (foreach) path.
  A checkpoint's optimizer state carries the implementation in its param groups and torch's
  load_state_dict restores it; a post-load hook puts the chosen one back.
- The gradient all-reduce at one data-parallel rank: DeepSpeed's ZeRO-0 path flattens every gradient into
  one buffer, all-reduces it over a group of one and copies it back. There is nothing to reduce, so
  the engine skips it. ZeRO 1-3 reduce inside their own optimizers and are left alone.
- The gradient norm: DeepSpeed's ZeRO-0 fp32 path clips with its own clip_grad_norm_ (a loop over the
  parameters, then an all-reduce of a norm that is already the same on every rank) and drops the norm.
  Instead the norm is computed once with torch's multi-tensor norm, used to clip, and kept where ZeRO and
  bf16 keep theirs: engine.get_global_grad_norm().
"""

from __future__ import annotations

from typing import Iterable

import torch

ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "single_tensor")


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel for `device` (CUDA, CPU, MPS, XPU, ... in torch >= 2.4)."""
    from torch.optim import optimizer as torch_optimizer

    supported = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])()
    return device.type in supported


def adamw_options(implementation: str, params: Iterable[torch.Tensor]) -> dict[str, bool]:
    """The torch.optim.AdamW keyword arguments (`fused`, `foreach`) that select `implementation` for `params`.
    "auto": fused where every parameter's device has the kernel, else foreach."""
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"adamw_implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        devices = {p.device for p in params}
        implementation = "fused" if devices and all(fused_adamw_supported(d) for d in devices) else "foreach"
    return {"fused": implementation == "fused", "foreach": implementation == "foreach"}


def keep_implementation_on_load(optimizer: torch.optim.Optimizer, options: dict[str, bool]) -> None:
    """After every load_state_dict (a resumed checkpoint), put `options` back into the param groups; the
    fused kernel also wants each `step` counter as a float32 tensor on its parameter's device."""
    def restore(loaded: torch.optim.Optimizer) -> None:
        for group in loaded.param_groups:
            group.update(options)
            if not options["fused"]:
                continue
            for param in group["params"]:
                state = loaded.state.get(param)
                if state and torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
    optimizer.register_load_state_dict_post_hook(restore)


def skip_single_rank_allreduce(engine) -> bool:
    """Turn off DeepSpeed's gradient all-reduce when it reduces over one data-parallel rank under ZeRO-0 (a
    flatten, an all-reduce over one rank and a copy back per step). Returns whether it was turned off."""
    if engine.zero_optimization_stage() != 0 or engine.dp_world_size != 1 or engine.seq_dp_world_size != 1:
        return False
    engine.enable_backward_allreduce = False
    return True


def record_grad_norm(engine) -> bool:
    """Under ZeRO-0 fp32 (where DeepSpeed keeps no norm), compute the global gradient norm once per
    optimizer step, on the reduced gradients, clip with it when clipping is on, and keep it as
    engine.get_global_grad_norm(). Returns whether the engine now records it (ZeRO 1-3 and bf16 already do).

    The reduced gradients are the same on every rank, so the local norm is the global one: no collective."""
    if engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled():
        return False
    max_norm = engine.gradient_clipping()

    def norm_of_gradients() -> list[torch.Tensor]:
        with_grad = [p for p in engine.module.parameters() if p.grad is not None]
        engine._global_grad_norm = (torch.nn.utils.get_total_norm([p.grad for p in with_grad]) if with_grad
                                    else torch.zeros(()))
        return with_grad

    def clip() -> None:  # called by DeepSpeed's _take_model_step in place of its own clip_fp32_gradients
        with_grad = norm_of_gradients()
        if with_grad:
            torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, engine._global_grad_norm)

    if max_norm > 0:
        engine.clip_fp32_gradients = clip
    else:
        engine.optimizer.register_step_pre_hook(lambda *_: norm_of_gradients() and None)
    return True

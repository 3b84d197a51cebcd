"""Learning-rate schedule: linear warmup, then cosine decay to min_lr_ratio x the base rate.

factor(s) = (s + 1) / warmup                                   for s < warmup (open_clip's warmup)
factor(s) = r + (1 - r) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2   afterwards, r = min_lr_ratio
"""

from __future__ import annotations

import math

import torch

from dmlscale.param_checks import check_real


def _check_steps(warmup_steps: int, total_steps: int) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"cosine schedule: {name} must be an int >= 0, got {value!r}")
    if total_steps < 1:  # warmup_steps > total_steps is allowed: the run ends inside the warmup
        raise ValueError(f"cosine schedule: need total_steps >= 1, got total_steps={total_steps!r}")


def cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0-based)."""
    _check_steps(warmup_steps, total_steps)
    check_real("cosine schedule", "min_lr_ratio", min_lr_ratio, minimum=0)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR with `cosine_factor`; its state_dict travels in DeepSpeed checkpoints."""
    _check_steps(warmup_steps, total_steps)
    check_real("cosine schedule", "min_lr_ratio", min_lr_ratio, minimum=0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, warmup_steps=warmup_steps, total_steps=total_steps,
                                              min_lr_ratio=min_lr_ratio))

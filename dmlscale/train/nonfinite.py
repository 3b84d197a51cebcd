"""Skip an optimizer update on every rank together when any rank sees a NaN or Inf.

One bad batch (a NaN pixel, an overflow at a too-high learning rate) must not turn every rank's
weights into NaN. Before the optimizer step of each training step, every rank reports whether its
own outputs (local embeddings), the loss or its gradients are non-finite; one all-reduce (MIN over
"rank that saw it, else world size") gives every rank the same decision and the lowest rank where the
problem started (its outputs, before the gather spread it to everyone). A skipped update leaves the
weights and the optimizer state untouched: the torch optimizer DeepSpeed drives is made a no-op for
that one engine step. The learning-rate schedule still advances, so it stays aligned with the step
count whatever DeepSpeed itself skipped (its ZeRO 1-2 optimizer also skips on an invalid gradient
norm and then does not step the schedule; the guard steps it).

After `max_in_a_row` skipped updates in a row the run stops with NonFiniteError naming the step and
the first rank that saw it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.distributed.collectives import all_reduce_min_no_grad


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def tensors_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no tensor holds a NaN or Inf: one multi-tensor norm per dtype and device and one
    synchronisation, instead of a check and a sync per tensor (a NaN or Inf anywhere makes a norm
    non-finite; finite values too large for the norm's dtype do too, which is as well a reason to skip)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.numel():
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor.detach())
    norms = [torch.stack(torch._foreach_norm(group)).float() for group in groups.values()]
    return not norms or bool(torch.isfinite(torch.cat([n.cpu() for n in norms])).all())


def _all_finite(data) -> bool:
    if isinstance(data, torch.Tensor):
        return not data.is_floating_point() or bool(torch.isfinite(data.detach()).all())
    if isinstance(data, dict):
        return all(_all_finite(value) for value in data.values())
    if isinstance(data, (list, tuple)):
        return all(_all_finite(value) for value in data)
    return True


class NonFiniteGuard:
    """Install on the torch optimizer inside a DeepSpeed engine; see the module docstring."""

    def __init__(self, engine, base_optimizer: torch.optim.Optimizer, *, rank: int, world_size: int,
                 max_in_a_row: int, device: torch.device | str = "cpu", extra_params: list | None = None):
        self.engine, self.rank, self.world_size = engine, rank, world_size
        self.extra_params = list(extra_params or [])  # e.g. the loss's own parameters, stepped outside the engine
        self.max_in_a_row, self.device = max_in_a_row, device
        self.num_skipped, self.in_a_row = 0, 0
        self.skipping, self.first_rank, self.what = False, None, ""
        self.outputs_finite = self.loss_finite = True
        step = base_optimizer.step

        def guarded_step(*args, **kwargs):
            return None if self.skipping else step(*args, **kwargs)
        guarded_step._wrapped_by_lr_sched = True  # still the scheduler-aware step torch's LambdaLR checks for
        base_optimizer.step = guarded_step

    def wrap_loss(self, loss_fn: Callable) -> Callable:
        """loss_fn that also records whether this rank's outputs and the loss are finite."""
        def checked(outputs):
            self.outputs_finite = _all_finite(outputs)
            loss = loss_fn(outputs)
            self.loss_finite = _all_finite(loss)
            return loss
        return checked

    def _grads_finite(self) -> bool:
        params = [*self.engine.module.parameters(), *self.extra_params]
        return tensors_finite([p.grad for p in params if p.grad is not None])

    def before_update(self) -> None:
        """Collective, before the optimizer step of a training step: decide together whether to skip."""
        started_here = not self.outputs_finite
        seen_here = started_here or not self.loss_finite or not self._grads_finite()
        nobody = self.world_size
        flags = torch.tensor([self.rank if started_here else nobody, self.rank if seen_here else nobody],
                             dtype=torch.float64, device=self.device)
        first_start, first_seen = (int(v) for v in all_reduce_min_no_grad(flags).tolist())
        self.skipping = first_seen < nobody
        self.first_rank = first_start if first_start < nobody else (first_seen if self.skipping else None)
        self.what = "output" if first_start < nobody else "loss or gradient"

    def after_update(self, step: int) -> bool:
        """After the engine step of training step `step`: True when its update was skipped. Raises
        NonFiniteError after max_in_a_row skipped steps in a row (on every rank alike)."""
        deepspeed_skipped = not getattr(self.engine, "_step_applied", True)
        skipped = self.skipping or deepspeed_skipped
        if deepspeed_skipped and self.engine.lr_scheduler is not None:
            self.engine.lr_scheduler.step()  # DeepSpeed did not advance the schedule on its own skip
        if deepspeed_skipped and not self.skipping:
            self.first_rank, self.what = None, "gradient norm over all ranks"
        self.skipping = False
        if not skipped:
            self.in_a_row = 0
            return False
        self.num_skipped += 1
        self.in_a_row += 1
        where = "an unknown rank" if self.first_rank is None else f"rank {self.first_rank}"
        if self.rank == 0:
            print(f"dmlscale train: step {step}: non-finite {self.what} first seen on {where}; the update was "
                  f"skipped on every rank ({self.in_a_row} in a row, {self.num_skipped} in all)", flush=True)
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"{self.in_a_row} steps in a row (up to step {step}) had a non-finite {self.what}, first seen on "
                f"{where}; stopping (train.max_nonfinite_steps={self.max_in_a_row}). The last checkpoint holds "
                f"finite weights; lower optim.lr or check the data, then resume")
        return True

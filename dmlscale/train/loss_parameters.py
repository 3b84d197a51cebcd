"""The loss's own trainable parameters (class weights, proxies, centres): their optimizer, outside DeepSpeed.

DeepSpeed averages every gradient of its module over the ranks, which is right for parameters that every
rank holds (CenterLoss's centres, ArcFaceLoss's full weight matrix, proxies) and wrong for the class
blocks of a sharded head (`dmlscale.distributed.ShardedArcFaceLoss` ...), which one rank owns each. So the
loss's parameters stay out of the engine and get their own AdamW, stepped right after the engine's:

- replicated parameters: gradients averaged over the ranks (the loss's gradient is W x this rank's
  share, see DistributedLoss), so every rank applies the same exact update;
- owned blocks: no reduction (each rank's gradient is already the exact slice);
- clipping at optim.grad_clip by the global norm of the loss's parameters (the replicated ones once,
  the owned blocks summed over the ranks), separate from the model's norm that DeepSpeed clips;
- learning rate optim.loss_lr (default optim.lr) times the run's schedule factor at that step, AdamW
  with the run's betas and eps, weight decay optim.loss_weight_decay; a skipped update (non-finite
  gradient anywhere) skips it here too.

The state travels in each rank's checkpoint extra: the replicated tensors and, for owned blocks, the
class range with the rows' values and AdamW moments, so a resume at another world size re-slices them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from dmlscale.distributed.collectives import all_reduce_sum_no_grad
from dmlscale.distributed.sharded_classification import OwnedBlock, class_block

STATE_KEYS = ("value", "exp_avg", "exp_avg_sq")


def owned_blocks(loss: torch.nn.Module) -> dict[str, OwnedBlock]:
    """{parameter name: its block} for the parameters this rank owns: those its sharded modules (any module
    with an `owned_blocks()` method, e.g. ShardedMarginSoftmaxLoss) declare."""
    blocks = {}
    for module_name, module in loss.named_modules():
        declared = getattr(module, "owned_blocks", None)
        if callable(declared):
            for name, block in declared().items():
                blocks[f"{module_name}.{name}" if module_name else name] = block
    return blocks


class LossParameters:
    """AdamW over a loss's trainable parameters; see the module docstring. Empty (no-op) when it has none."""

    def __init__(self, loss: torch.nn.Module, *, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, grad_clip: float, world_size: int) -> None:
        self.named = [(name, param) for name, param in loss.named_parameters() if param.requires_grad]
        self.owned = owned_blocks(loss)
        self.lr, self.grad_clip, self.world_size = lr, grad_clip, world_size
        self.last_grad_norm: float | None = None
        self.optimizer = None
        if self.named:
            self.optimizer = torch.optim.AdamW([param for _, param in self.named], lr=lr, betas=tuple(betas), eps=eps,
                                               weight_decay=weight_decay)

    def __bool__(self) -> bool:
        return bool(self.named)

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [param for _, param in self.named]

    def _grads(self) -> list[torch.Tensor]:
        for _, param in self.named:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        return [param.grad for _, param in self.named]

    def _average_replicated(self) -> None:
        replicated = [param.grad for name, param in self.named if name not in self.owned]
        if self.world_size == 1 or not replicated:
            return
        flat = torch.cat([grad.reshape(-1) for grad in replicated])
        flat = all_reduce_sum_no_grad(flat) / self.world_size
        offset = 0
        for grad in replicated:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def _global_norm(self) -> float:
        replicated = sum(float(param.grad.double().pow(2).sum()) for name, param in self.named
                         if name not in self.owned)
        owned = torch.tensor([sum(float(param.grad.double().pow(2).sum()) for name, param in self.named
                                  if name in self.owned)], dtype=torch.float64)
        if self.world_size > 1 and self.owned:
            owned = all_reduce_sum_no_grad(owned)
        return math.sqrt(replicated + float(owned[0]))

    def step(self, *, schedule_factor: float, skip: bool) -> None:
        """After the engine's update of a training step (collective when world_size > 1: call on every rank)."""
        if not self.named:
            return
        grads = self._grads()
        if not skip:
            self._average_replicated()
            self.last_grad_norm = self._global_norm()
            if self.grad_clip > 0 and self.last_grad_norm > self.grad_clip:
                factor = self.grad_clip / (self.last_grad_norm + 1e-6)
                for grad in grads:
                    grad.mul_(factor)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * schedule_factor
            self.optimizer.step()
        for _, param in self.named:
            param.grad = None

    def state_dict(self) -> dict | None:
        """This rank's state: {name: {"value", "exp_avg", "exp_avg_sq", "step", "block"}} (block: the owned
        class range, None for a replicated parameter); None without parameters."""
        if not self.named:
            return None
        state = {}
        for name, param in self.named:
            moments = self.optimizer.state.get(param, {})
            block = self.owned.get(name)
            entry = {"value": param.detach().clone(), "block": None if block is None else (block.start, block.end),
                     "step": float(moments["step"]) if "step" in moments else 0.0}
            for key in ("exp_avg", "exp_avg_sq"):
                entry[key] = moments[key].detach().clone() if key in moments else torch.zeros_like(param)
            state[name] = entry
        return state

    def load_state_dict(self, state: dict | None, *, saved_world_size: int,
                        saved_state_of_rank: Callable[[int], dict | None]) -> None:
        """Restore from this rank's saved `state` (same world size), or, at another world size, cut the
        owned blocks out of the saved ranks' states (`saved_state_of_rank(r)`) that cover this rank's range."""
        if not self.named:
            if state:
                raise ValueError(f"the checkpoint holds loss parameters {sorted(state)}, but this run's loss has none")
            return
        if state is None:
            raise ValueError(f"the checkpoint holds no loss parameters; this run's loss trains "
                             f"{[name for name, _ in self.named]}")
        missing = [name for name, _ in self.named if name not in state]
        if missing:
            raise ValueError(f"the checkpoint's loss parameters {sorted(state)} lack {missing}")
        saved = {r: (state if r == 0 else None) for r in range(saved_world_size)}
        for name, param in self.named:
            entry = state[name]
            if name in self.owned and tuple(entry["block"]) != (self.owned[name].start, self.owned[name].end):
                entry = self._owned_from_saved(name, saved, saved_world_size, saved_state_of_rank)
            if tuple(entry["value"].shape) != tuple(param.shape):
                raise ValueError(f"loss parameter {name!r}: checkpoint shape {tuple(entry['value'].shape)}, this "
                                 f"run's {tuple(param.shape)} (was the loss's num_classes or embedding size changed?)")
            with torch.no_grad():
                param.copy_(entry["value"])
            self.optimizer.state[param] = {"step": torch.tensor(entry["step"]),
                                           **{key: entry[key].clone().to(param) for key in ("exp_avg", "exp_avg_sq")}}

    def _owned_from_saved(self, name: str, saved: dict, saved_world_size: int,
                          saved_state_of_rank: Callable[[int], dict | None]) -> dict:
        block = self.owned[name]
        pieces: dict[str, list[torch.Tensor]] = {key: [] for key in STATE_KEYS}
        covered, step = block.start, saved[0][name]["step"]
        for rank in range(saved_world_size):
            low, high = class_block(block.num_classes, saved_world_size, rank)
            low, high = max(low, covered), min(high, block.end)
            if low >= high:
                continue
            if saved[rank] is None:
                saved[rank] = saved_state_of_rank(rank)
            entry = saved[rank][name]
            held = dataclasses.replace(block, start=entry["block"][0], end=entry["block"][1])
            if held.start > low or held.end < high:
                raise ValueError(f"loss parameter {name!r}: saved rank {rank} holds classes {entry['block']}, "
                                 f"expected [{low}, {high}) within them")
            for key in STATE_KEYS:
                pieces[key].append(held.narrow(entry[key], low, high))
            covered = high
        if covered != block.end:
            raise ValueError(f"loss parameter {name!r}: the checkpoint's blocks cover classes up to {covered}, this "
                             f"rank needs [{block.start}, {block.end})")
        template = saved[0][name]["value"]
        empty = dataclasses.replace(block, start=0, end=0)
        return {"step": step, **{key: torch.cat(parts, dim=block.dim) if parts else empty.narrow(template, 0, 0)
                                 for key, parts in pieces.items()}}

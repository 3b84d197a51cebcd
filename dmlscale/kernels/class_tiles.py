"""Any per-class score against a block of class parameters, streamed class tile by class tile.

Legend: N rows (the global batch), D embedding size, C classes of this block, T classes of one tile,
R rows whose target class lies in the tile, e_ND embeddings (whatever the caller gathered), w the block's
parameter with `per_class` entries per class laid out class-major along dimension `dim` (D x C*S class
columns, or C*S x D proxy rows).

Two reductions over the classes, each held at N x T at a time, with exact gradients to e_ND and w:

- `tiled_logsumexp`: softmax heads. A tile function maps (e_ND, w_tile, rows_R, cols_R) to the plain
  logits_NT of the tile and the target logits of rows_R (cols_R: their class within the tile, to which
  the caller's margin applies). Returned: lse_N over every NON-target logit of the block (-inf where
  none) and the target logit of each row whose class the block holds (0 elsewhere).
- `tiled_class_sum`: per-class terms (Proxy Anchor). A tile function maps (e_ND, w_tile, c0, c1) to a
  scalar; returned: the sum over the tiles.

Neither keeps a graph: the forward runs without autograd; the backward recomputes each tile under
autograd and pulls its gradient out with `torch.autograd.grad` (d lse / d logit = softmax with the
block's normaliser, times the incoming gradient), writing the block's parameter gradient tile by tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TileLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TileSum = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def _tile_of(w: torch.Tensor, dim: int, per_class: int, c0: int, c1: int) -> torch.Tensor:
    return w.narrow(dim, c0 * per_class, (c1 - c0) * per_class)


def _tile_targets(target_N: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns within the tile) of the targets that fall in classes [c0, c1)."""
    rows = torch.nonzero((target_N >= c0) & (target_N < c1)).squeeze(1)
    return rows, target_N[rows] - c0


def _pull(outputs: list[torch.Tensor], grads: list[torch.Tensor], e_ND: torch.Tensor, w_tile: torch.Tensor,
          grad_e_ND: torch.Tensor | None, grad_w_tile: torch.Tensor | None) -> None:
    """Add d(outputs . grads) / d(e, w_tile) into the given buffers (None: not needed)."""
    wanted = [x for x, buffer in ((e_ND, grad_e_ND), (w_tile, grad_w_tile)) if buffer is not None]
    found = torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
    for buffer, grad in zip([b for b in (grad_e_ND, grad_w_tile) if b is not None], found):
        if grad is not None:
            buffer.add_(grad)


class _TiledLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_ND, w, target_N, tile_logits, layout, tile):
        dim, per_class, num_classes = layout
        lse_N = torch.full((e_ND.shape[0],), float("-inf"), dtype=e_ND.dtype, device=e_ND.device)
        target_logit_N = torch.zeros_like(lse_N)
        for c0 in range(0, num_classes, tile):
            c1 = min(c0 + tile, num_classes)
            rows, cols = _tile_targets(target_N, c0, c1)
            logits_NT, target_R = tile_logits(e_ND, _tile_of(w, dim, per_class, c0, c1), rows, cols)
            target_logit_N[rows] = target_R
            logits_NT[rows, cols] = float("-inf")
            torch.logaddexp(lse_N, torch.logsumexp(logits_NT, dim=1), out=lse_N)
        ctx.save_for_backward(e_ND, w, target_N, lse_N)
        ctx.tile_logits, ctx.layout, ctx.tile = tile_logits, layout, tile
        return lse_N, target_logit_N

    @staticmethod
    def backward(ctx, grad_lse_N, grad_target_N):
        e_ND, w, target_N, lse_N = ctx.saved_tensors
        (dim, per_class, num_classes), tile = ctx.layout, ctx.tile
        grad_e_ND = torch.zeros_like(e_ND) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        grad_lse_N = torch.zeros_like(lse_N) if grad_lse_N is None else grad_lse_N
        grad_target_N = torch.zeros_like(lse_N) if grad_target_N is None else grad_target_N
        safe_lse_N1 = torch.where(torch.isfinite(lse_N), lse_N, torch.zeros_like(lse_N))[:, None]
        e_leaf = e_ND.detach().requires_grad_()
        for c0 in range(0, num_classes, tile):
            c1 = min(c0 + tile, num_classes)
            rows, cols = _tile_targets(target_N, c0, c1)
            w_leaf = _tile_of(w, dim, per_class, c0, c1).detach().requires_grad_()
            with torch.enable_grad():
                logits_NT, target_R = ctx.tile_logits(e_leaf, w_leaf, rows, cols)
            with torch.no_grad():
                grad_logits_NT = logits_NT.detach().clone()
                grad_logits_NT[rows, cols] = float("-inf")
                grad_logits_NT.sub_(safe_lse_N1).exp_().mul_(grad_lse_N[:, None])
            grad_w_tile = None if grad_w is None else _tile_of(grad_w, dim, per_class, c0, c1)
            _pull([logits_NT, target_R], [grad_logits_NT, grad_target_N[rows]], e_leaf, w_leaf, grad_e_ND, grad_w_tile)
        return grad_e_ND, grad_w, None, None, None, None


def tiled_logsumexp(e_ND: torch.Tensor, w: torch.Tensor, target_N: torch.Tensor, tile_logits: TileLogits, *,
                    dim: int, per_class: int, num_classes: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse_N over the block's non-target logits, target logit of each row whose class the block holds, 0
    elsewhere). target_N: each row's class within the block, -1 when another block holds it. The tile
    function must be deterministic (the backward recomputes it) and may write into the logits it returns."""
    if e_ND.dtype != w.dtype:
        raise ValueError(f"embeddings dtype {e_ND.dtype} differs from the class parameters' dtype {w.dtype}")
    return _TiledLogSumExp.apply(e_ND, w, target_N, tile_logits, (dim, per_class, num_classes), int(tile))


class _TiledClassSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_ND, w, tile_sum, layout, tile):
        dim, per_class, num_classes = layout
        total = torch.zeros((), dtype=e_ND.dtype, device=e_ND.device)
        for c0 in range(0, num_classes, tile):
            c1 = min(c0 + tile, num_classes)
            total += tile_sum(e_ND, _tile_of(w, dim, per_class, c0, c1), c0, c1)
        ctx.save_for_backward(e_ND, w)
        ctx.tile_sum, ctx.layout, ctx.tile = tile_sum, layout, tile
        return total

    @staticmethod
    def backward(ctx, grad_total):
        e_ND, w = ctx.saved_tensors
        (dim, per_class, num_classes), tile = ctx.layout, ctx.tile
        grad_e_ND = torch.zeros_like(e_ND) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        e_leaf = e_ND.detach().requires_grad_()
        for c0 in range(0, num_classes, tile):
            c1 = min(c0 + tile, num_classes)
            w_leaf = _tile_of(w, dim, per_class, c0, c1).detach().requires_grad_()
            with torch.enable_grad():
                value = ctx.tile_sum(e_leaf, w_leaf, c0, c1)
            grad_w_tile = None if grad_w is None else _tile_of(grad_w, dim, per_class, c0, c1)
            _pull([value], [grad_total], e_leaf, w_leaf, grad_e_ND, grad_w_tile)
        return grad_e_ND, grad_w, None, None, None


def tiled_class_sum(e_ND: torch.Tensor, w: torch.Tensor, tile_sum: TileSum, *, dim: int, per_class: int,
                    num_classes: int, tile: int) -> torch.Tensor:
    """sum over class tiles [c0, c1) of tile_sum(e_ND, w_tile, c0, c1), a scalar, with exact gradients;
    the tile function must be deterministic (the backward recomputes it)."""
    if e_ND.dtype != w.dtype:
        raise ValueError(f"embeddings dtype {e_ND.dtype} differs from the class parameters' dtype {w.dtype}")
    return _TiledClassSum.apply(e_ND, w, tile_sum, (dim, per_class, num_classes), int(tile))

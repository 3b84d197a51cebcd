"""Streamed pair losses: MultiSimilarity and the contrastive negatives over B x R tiles, no B x R matrix.

Legend: B query rows, R reference rows, T tile size, mat_TT a tile of distances (similarities when
`is_inverted`), pos_TT / neg_TT its positive / negative pairs, *_B one value per query row,
s = +1 for a distance, -1 for a similarity (d margin(x, y) / dx).

A kernel keeps per-row (or total) statistics over the tiles in the forward; the backward recomputes
each tile under autograd (`tile_backward`) with dL/dmat_TT from the complete statistics:
  MultiSimilarity: L_a = lse_pos_a / alpha + lse_neg_a / beta with lse = log(1 + sum exp(x)) merged
    online (start at log 1 = 0, then logaddexp per tile), x = alpha margin(mat, base) on positives and
    beta margin(base, mat) on negatives; dL_a/dmat_aj = s exp(x_aj - lse_pos_a) on positives and
    -s exp(x_aj - lse_neg_a) on negatives.
  Contrastive negatives: total = sum over kept negative pairs of [margin(m_neg, mat)]_+ and their
    count (the reducer's filter applied per pair); dtotal/dmat = -s on kept pairs with a positive hinge.
Memory O((B + R) D + T^2); time: one tile pass forward, one (with autograd) backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.distances import BaseDistance
from dmlscale.kernels.distance_tiles import distance_tile, tile_backward, tile_label_masks
from dmlscale.kernels.tiles import tiles


class StreamedRowsFunction(torch.autograd.Function):
    """Differentiable output of `kernel` accumulated over every tile (see the module docstring)."""

    @staticmethod
    def forward(ctx, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor, ref_labels_R: torch.Tensor,
                query_ref_index_B: torch.Tensor, kernel: MultiSimilarityKernel | NegativeHingeKernel,
                tile: int) -> torch.Tensor:
        for r0, r1, c0, c1 in tiles(q_BD.shape[0], r_RD.shape[0], tile):
            mat_TT = distance_tile(kernel.distance, q_BD[r0:r1], r_RD[c0:c1])
            pos_TT, neg_TT = tile_label_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1)
            kernel.accumulate(mat_TT, pos_TT, neg_TT, r0, r1)
        ctx.save_for_backward(q_BD, r_RD, labels_B, ref_labels_R, query_ref_index_B)
        ctx.kernel, ctx.tile = kernel, tile
        return kernel.result()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q_BD, r_RD, labels_B, ref_labels_R, query_ref_index_B = ctx.saved_tensors
        kernel = ctx.kernel
        dq_BD, dr_RD = torch.zeros_like(q_BD), torch.zeros_like(r_RD)
        for r0, r1, c0, c1 in tiles(q_BD.shape[0], r_RD.shape[0], ctx.tile):
            pos_TT, neg_TT = tile_label_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1)
            dq_TD, dr_TD = tile_backward(kernel.distance, q_BD[r0:r1], r_RD[c0:c1],
                                         lambda mat_TT: kernel.grad(grad_out, mat_TT, pos_TT, neg_TT, r0, r1))
            dq_BD[r0:r1] += dq_TD
            dr_RD[c0:c1] += dr_TD
        return dq_BD, dr_RD, None, None, None, None, None


class MultiSimilarityKernel:
    """Per-row MultiSimilarity losses (B) from online log(1 + sum exp) of positives and negatives."""

    def __init__(self, distance: BaseDistance, alpha: float, beta: float, base: float, num_rows: int,
                 like: torch.Tensor) -> None:
        self.distance, self.alpha, self.beta, self.base = distance, alpha, beta, base
        self.sign = -1.0 if distance.is_inverted else 1.0
        self.lse_pos_B = torch.zeros(num_rows, dtype=like.dtype, device=like.device)  # log 1: the "1 +"
        self.lse_neg_B = torch.zeros_like(self.lse_pos_B)

    def exponents(self, mat_TT: torch.Tensor, pos_TT: torch.Tensor,
                  neg_TT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_pos_TT = (self.alpha * self.distance.margin(mat_TT, self.base)).masked_fill(~pos_TT, float("-inf"))
        x_neg_TT = (self.beta * self.distance.margin(self.base, mat_TT)).masked_fill(~neg_TT, float("-inf"))
        return x_pos_TT, x_neg_TT

    def accumulate(self, mat_TT: torch.Tensor, pos_TT: torch.Tensor, neg_TT: torch.Tensor, r0: int, r1: int) -> None:
        x_pos_TT, x_neg_TT = self.exponents(mat_TT, pos_TT, neg_TT)
        torch.logaddexp(self.lse_pos_B[r0:r1], torch.logsumexp(x_pos_TT, dim=1), out=self.lse_pos_B[r0:r1])
        torch.logaddexp(self.lse_neg_B[r0:r1], torch.logsumexp(x_neg_TT, dim=1), out=self.lse_neg_B[r0:r1])

    def result(self) -> torch.Tensor:
        return self.lse_pos_B / self.alpha + self.lse_neg_B / self.beta

    def grad(self, grad_B: torch.Tensor, mat_TT: torch.Tensor, pos_TT: torch.Tensor, neg_TT: torch.Tensor, r0: int,
             r1: int) -> torch.Tensor:
        x_pos_TT, x_neg_TT = self.exponents(mat_TT, pos_TT, neg_TT)
        weight_TT = torch.exp(x_pos_TT - self.lse_pos_B[r0:r1, None])
        weight_TT -= torch.exp(x_neg_TT - self.lse_neg_B[r0:r1, None])
        return weight_TT * (self.sign * grad_B[r0:r1, None])


class NegativeHingeKernel:
    """Sum (and count) of [margin(neg_margin, mat)]_+ over the negative pairs that pass `keep_fn`."""

    def __init__(self, distance: BaseDistance, neg_margin: float,
                 keep_fn: Callable[[torch.Tensor], torch.Tensor] | None, like: torch.Tensor) -> None:
        self.distance, self.neg_margin, self.keep_fn = distance, neg_margin, keep_fn
        self.total = torch.zeros((), dtype=torch.float64, device=like.device)  # B R terms: fp64 sum
        self.count, self.dtype = 0, like.dtype

    def terms(self, mat_TT: torch.Tensor, neg_TT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hinge_TT = torch.relu(self.distance.margin(self.neg_margin, mat_TT))
        keep_TT = neg_TT if self.keep_fn is None else neg_TT & self.keep_fn(hinge_TT)
        return hinge_TT, keep_TT

    def accumulate(self, mat_TT: torch.Tensor, pos_TT: torch.Tensor, neg_TT: torch.Tensor, r0: int, r1: int) -> None:
        hinge_TT, keep_TT = self.terms(mat_TT, neg_TT)
        self.total += (hinge_TT * keep_TT).sum(dtype=torch.float64)
        self.count += int(keep_TT.sum())

    def result(self) -> torch.Tensor:
        return self.total.to(self.dtype)

    def grad(self, grad_total: torch.Tensor, mat_TT: torch.Tensor, pos_TT: torch.Tensor, neg_TT: torch.Tensor,
             r0: int, r1: int) -> torch.Tensor:
        hinge_TT, keep_TT = self.terms(mat_TT, neg_TT)
        slope = 1.0 if self.distance.is_inverted else -1.0  # d margin(m, mat) / d mat
        return (keep_TT & (hinge_TT > 0)).to(mat_TT.dtype) * (slope * grad_total)


def streamed_multisim_rows(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor,
                           ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, *, alpha: float, beta: float,
                           base: float, tile: int) -> torch.Tensor:
    """Per-row MultiSimilarity losses (B), differentiable with respect to q_BD and r_RD."""
    kernel = MultiSimilarityKernel(distance, alpha, beta, base, q_BD.shape[0], q_BD)
    return StreamedRowsFunction.apply(q_BD, r_RD, labels_B, ref_labels_R, query_ref_index_B, kernel, tile)


def streamed_negative_hinge(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor,
                            ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, *, neg_margin: float,
                            keep_fn: Callable[[torch.Tensor], torch.Tensor] | None,
                            tile: int) -> tuple[torch.Tensor, int]:
    """(total, count) of the contrastive negative terms kept by `keep_fn` (None: all negative pairs)."""
    kernel = NegativeHingeKernel(distance, neg_margin, keep_fn, q_BD)
    total = StreamedRowsFunction.apply(q_BD, r_RD, labels_B, ref_labels_R, query_ref_index_B, kernel, tile)
    return total, kernel.count

"""Streamed SupCon: per-row losses of the supervised contrastive loss without the B x R matrix.

Legend: B query rows, R reference rows, T tile size; l = larger-is-closer logits (+-mat / temperature),
P(a) the positives of row a (same label, not its own sample), A(a) every column but its own sample.
L_a = log sum_{j in A(a)} exp(l_aj) - 1/|P(a)| sum_{p in P(a)} l_ap  (0 when P(a) is empty).
One forward pass keeps per-row statistics (online log-sum-exp, positive-logit sums and counts); the
backward recomputes each tile under autograd, so any distance works: dL_a/dl_aj = g_a (softmax_aj -
[j in P(a)] / |P(a)|). Memory O((B + R) D + T^2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.kernels.tiles import tiles


def _tile_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1):
    """(positives, own-sample) boolean masks of one tile."""
    cols_T = torch.arange(c0, c1, device=labels_B.device)
    own_TT = query_ref_index_B[r0:r1, None] == cols_T[None, :]
    same_TT = labels_B[r0:r1, None] == ref_labels_R[None, c0:c1]
    return same_TT & ~own_TT, own_TT


class TiledSupConFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query_BD: torch.Tensor, ref_RD: torch.Tensor, labels_B: torch.Tensor, ref_labels_R: torch.Tensor,
                query_ref_index_B: torch.Tensor, logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                tile: int) -> torch.Tensor:
        num_rows, num_cols = query_BD.shape[0], ref_RD.shape[0]
        lse_B = torch.full((num_rows,), float("-inf"), dtype=query_BD.dtype, device=query_BD.device)
        pos_sum_B = torch.zeros(num_rows, dtype=query_BD.dtype, device=query_BD.device)
        num_pos_B = torch.zeros(num_rows, dtype=query_BD.dtype, device=query_BD.device)
        for r0, r1, c0, c1 in tiles(num_rows, num_cols, tile):
            logits_TT = logits_fn(query_BD[r0:r1], ref_RD[c0:c1])
            pos_TT, own_TT = _tile_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1)
            pos_sum_B[r0:r1] += (logits_TT * pos_TT).sum(dim=1)
            num_pos_B[r0:r1] += pos_TT.sum(dim=1)
            torch.logaddexp(lse_B[r0:r1], torch.logsumexp(logits_TT.masked_fill(own_TT, float("-inf")), dim=1),
                            out=lse_B[r0:r1])
        has_pos_B = num_pos_B > 0
        loss_B = torch.where(has_pos_B, lse_B - pos_sum_B / num_pos_B.clamp(min=1), torch.zeros_like(lse_B))
        ctx.save_for_backward(query_BD, ref_RD, labels_B, ref_labels_R, query_ref_index_B, lse_B, num_pos_B)
        ctx.logits_fn, ctx.tile = logits_fn, tile
        return loss_B

    @staticmethod
    def backward(ctx, grad_B: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query_BD, ref_RD, labels_B, ref_labels_R, query_ref_index_B, lse_B, num_pos_B = ctx.saved_tensors
        row_weight_B = torch.where(num_pos_B > 0, grad_B, torch.zeros_like(grad_B))
        dquery_BD, dref_RD = torch.zeros_like(query_BD), torch.zeros_like(ref_RD)
        for r0, r1, c0, c1 in tiles(query_BD.shape[0], ref_RD.shape[0], ctx.tile):
            q_TD = query_BD[r0:r1].detach().requires_grad_(True)
            r_TD = ref_RD[c0:c1].detach().requires_grad_(True)
            with torch.enable_grad():
                logits_TT = ctx.logits_fn(q_TD, r_TD)
            pos_TT, own_TT = _tile_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1)
            with torch.no_grad():
                softmax_TT = torch.exp(logits_TT.detach() - lse_B[r0:r1, None]).masked_fill_(own_TT, 0)
                grad_TT = (softmax_TT - pos_TT / num_pos_B[r0:r1, None].clamp(min=1)) * row_weight_B[r0:r1, None]
            dq, dr = torch.autograd.grad(logits_TT, (q_TD, r_TD), grad_TT)
            dquery_BD[r0:r1] += dq
            dref_RD[c0:c1] += dr
        return dquery_BD, dref_RD, None, None, None, None, None


def tiled_supcon_row_losses(query_BD: torch.Tensor, ref_RD: torch.Tensor, labels_B: torch.Tensor,
                            ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor,
                            logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tile: int) -> torch.Tensor:
    """Per-row SupCon losses (B). `logits_fn(q_TD, r_TD)` gives a tile's larger-is-closer logits from
    the already normalised embeddings; gradients reach query_BD and ref_RD (when they require them)."""
    return TiledSupConFunction.apply(query_BD, ref_RD, labels_B, ref_labels_R, query_ref_index_B, logits_fn, tile)

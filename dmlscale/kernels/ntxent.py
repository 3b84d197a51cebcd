"""Streamed NT-Xent: the per-pair losses of NTXentLoss without the B x R matrix.

Legend: B query rows, R reference rows, T tile size, P positive pairs (a_P, p_P), l = larger-is-closer
logits (+-mat / temperature); neg_lse_B = log sum_{n in N(a)} c_an exp(l_an), with c_an how often
(a, n) is a negative pair (0/1 from labels, a count from an indices_tuple).
L_ap = -log( sigmoid(l_ap - neg_lse_a) + tiny ), which is exp(l_ap) / (exp(l_ap) + sum_n c_an exp(l_an)).
One forward pass over the tiles picks out the positive logits and merges neg_lse online (O(B + P)
statistics); the backward recomputes each tile under autograd, so any distance works:
dl_an = g_lse_a c_an exp(l_an - neg_lse_a), dl_ap += g_pos_ap. Memory O((B + R) D + P + T^2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.kernels.tiles import tiles


class _TileBuckets:
    """Pairs (rows_P, cols_P) grouped by the tile (in `tiles` order) they fall in."""

    def __init__(self, rows_P: torch.Tensor, cols_P: torch.Tensor, tile: int, num_cols: int, num_tiles: int) -> None:
        num_col_tiles = -(-num_cols // tile)
        tile_id_P = (rows_P // tile) * num_col_tiles + cols_P // tile
        self.order_P = torch.argsort(tile_id_P, stable=True)
        counts = torch.bincount(tile_id_P, minlength=num_tiles).tolist()
        self.starts = [0]
        for count in counts:
            self.starts.append(self.starts[-1] + count)
        self.rows_P, self.cols_P = rows_P, cols_P

    def local(self, k: int, r0: int, c0: int):
        """(pair ids, rows within the tile, columns within the tile) of tile k."""
        ids = self.order_P[self.starts[k]:self.starts[k + 1]]
        return ids, self.rows_P[ids] - r0, self.cols_P[ids] - c0


def _num_tiles(num_rows: int, num_cols: int, tile: int) -> int:
    return (-(-num_rows // tile)) * (-(-num_cols // tile))


def _neg_weights(spec, k, r0, r1, c0, c1, dtype):
    """c_an of one tile: labels differ (labels mode) or the multiplicity of the listed negative pairs."""
    if spec[0] == "labels":
        labels_B, ref_labels_R = spec[1], spec[2]
        return (labels_B[r0:r1, None] != ref_labels_R[None, c0:c1]).to(dtype)
    buckets = spec[1]
    _, rows, cols = buckets.local(k, r0, c0)
    counts_TT = torch.zeros(r1 - r0, c1 - c0, dtype=dtype, device=rows.device)
    return counts_TT.index_put_((rows, cols), torch.ones(len(rows), dtype=dtype, device=rows.device), accumulate=True)


class TiledNTXentFunction(torch.autograd.Function):
    """(pos_P, neg_lse_B) from streamed tiles; `neg_spec` is ("labels", labels_B, ref_labels_R) or
    ("pairs", a2_N, n_N)."""

    @staticmethod
    def forward(ctx, query_BD: torch.Tensor, ref_RD: torch.Tensor, a_P: torch.Tensor, p_P: torch.Tensor,
                neg_spec: tuple, logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        num_rows, num_cols = query_BD.shape[0], ref_RD.shape[0]
        num_tiles = _num_tiles(num_rows, num_cols, tile)
        pos_buckets = _TileBuckets(a_P, p_P, tile, num_cols, num_tiles)
        if neg_spec[0] == "pairs":
            neg_spec = ("pairs", _TileBuckets(neg_spec[1], neg_spec[2], tile, num_cols, num_tiles))
        pos_P = torch.empty(len(a_P), dtype=query_BD.dtype, device=query_BD.device)
        neg_lse_B = torch.full((num_rows,), float("-inf"), dtype=query_BD.dtype, device=query_BD.device)
        for k, (r0, r1, c0, c1) in enumerate(tiles(num_rows, num_cols, tile)):
            logits_TT = logits_fn(query_BD[r0:r1], ref_RD[c0:c1])
            ids, rows, cols = pos_buckets.local(k, r0, c0)
            pos_P[ids] = logits_TT[rows, cols]
            weight_TT = _neg_weights(neg_spec, k, r0, r1, c0, c1, logits_TT.dtype)
            tile_lse_T = torch.logsumexp(logits_TT + weight_TT.log(), dim=1)  # log 0 = -inf drops non-negatives
            torch.logaddexp(neg_lse_B[r0:r1], tile_lse_T, out=neg_lse_B[r0:r1])
        ctx.save_for_backward(query_BD, ref_RD, neg_lse_B)
        ctx.pos_buckets, ctx.neg_spec, ctx.logits_fn, ctx.tile = pos_buckets, neg_spec, logits_fn, tile
        return pos_P, neg_lse_B

    @staticmethod
    def backward(ctx, grad_pos_P: torch.Tensor, grad_lse_B: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query_BD, ref_RD, neg_lse_B = ctx.saved_tensors
        has_neg_B = torch.isfinite(neg_lse_B)
        row_weight_B = torch.where(has_neg_B, grad_lse_B, torch.zeros_like(grad_lse_B))
        safe_lse_B = torch.where(has_neg_B, neg_lse_B, torch.zeros_like(neg_lse_B))
        dquery_BD, dref_RD = torch.zeros_like(query_BD), torch.zeros_like(ref_RD)
        for k, (r0, r1, c0, c1) in enumerate(tiles(query_BD.shape[0], ref_RD.shape[0], ctx.tile)):
            q_TD = query_BD[r0:r1].detach().requires_grad_(True)
            r_TD = ref_RD[c0:c1].detach().requires_grad_(True)
            with torch.enable_grad():
                logits_TT = ctx.logits_fn(q_TD, r_TD)
            with torch.no_grad():
                weight_TT = _neg_weights(ctx.neg_spec, k, r0, r1, c0, c1, logits_TT.dtype)
                grad_TT = (logits_TT.detach() - safe_lse_B[r0:r1, None]).masked_fill_(weight_TT == 0, float("-inf"))
                grad_TT = grad_TT.exp_().mul_(weight_TT).mul_(row_weight_B[r0:r1, None])
                ids, rows, cols = ctx.pos_buckets.local(k, r0, c0)
                grad_TT.index_put_((rows, cols), grad_pos_P[ids], accumulate=True)
            dq, dr = torch.autograd.grad(logits_TT, (q_TD, r_TD), grad_TT)
            dquery_BD[r0:r1] += dq
            dref_RD[c0:c1] += dr
        return dquery_BD, dref_RD, None, None, None, None, None


def tiled_ntxent_pair_losses(query_BD: torch.Tensor, ref_RD: torch.Tensor, a_P: torch.Tensor, p_P: torch.Tensor,
                             neg_spec: tuple, logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                             tile: int) -> torch.Tensor:
    """Per-positive-pair NT-Xent losses (P), streamed; gradients reach query_BD and ref_RD."""
    pos_P, neg_lse_B = TiledNTXentFunction.apply(query_BD, ref_RD, a_P, p_P, neg_spec, logits_fn, tile)
    prob_P = torch.sigmoid(pos_P - neg_lse_B[a_P])  # 1 for anchors without negatives: loss 0
    return -torch.log(prob_P + torch.finfo(prob_P.dtype).tiny)

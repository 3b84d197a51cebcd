"""Pieces of a distance matrix without the matrix: T x T tiles, chosen entries, and a tile's backward.

Legend: B query rows, R reference rows, D feature size, T tile size, P chosen (row, column) pairs;
q_BD / r_RD embeddings already normalised by the distance (`distance.maybe_normalize`).

Every value here is `distance.compute_mat(...) ** power` on a block of rows, i.e. the formula the
distance's own forward uses on the full B x R matrix, so a streamed loss and the materialised one
agree to rounding for every distance (Lp, cosine, dot product, SNR). Gradients come from autograd on
the recomputed block, so no distance needs a hand-written derivative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.distances import BaseDistance

PAIR_CHUNK = 64  # pairs per block in `paired_values`: O(P * PAIR_CHUNK * D) work, O(PAIR_CHUNK^2) memory


def distance_tile(distance: BaseDistance, q_TD: torch.Tensor, r_TD: torch.Tensor) -> torch.Tensor:
    """The T x T block of the distance matrix between normalised rows q_TD and r_TD."""
    mat_TT = distance.compute_mat(q_TD, r_TD)
    return mat_TT if distance.power == 1 else mat_TT**distance.power


class PairedValuesFunction(torch.autograd.Function):
    """mat[rows_P, cols_P] block by block; the backward recomputes each block under autograd and
    scatters its rows' gradients (never a B x D gradient per block)."""

    @staticmethod
    def forward(ctx, q_BD: torch.Tensor, r_RD: torch.Tensor, rows_P: torch.Tensor, cols_P: torch.Tensor,
                distance: BaseDistance, chunk: int) -> torch.Tensor:
        values_P = torch.cat([distance_tile(distance, q_BD[rows_P[s:s + chunk]], r_RD[cols_P[s:s + chunk]]).diagonal()
                              for s in range(0, len(rows_P), chunk)])
        ctx.save_for_backward(q_BD, r_RD, rows_P, cols_P)
        ctx.distance, ctx.chunk = distance, chunk
        return values_P

    @staticmethod
    def backward(ctx, grad_P: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q_BD, r_RD, rows_P, cols_P = ctx.saved_tensors
        dq_BD, dr_RD = torch.zeros_like(q_BD), torch.zeros_like(r_RD)
        for s in range(0, len(rows_P), ctx.chunk):
            rows_C, cols_C = rows_P[s:s + ctx.chunk], cols_P[s:s + ctx.chunk]
            dq_CD, dr_CD = tile_backward(ctx.distance, q_BD[rows_C], r_RD[cols_C],
                                         lambda mat_CC: torch.diag(grad_P[s:s + ctx.chunk]).to(mat_CC.dtype))
            dq_BD.index_add_(0, rows_C, dq_CD)
            dr_RD.index_add_(0, cols_C, dr_CD)
        return dq_BD, dr_RD, None, None, None, None


def paired_values(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, rows_P: torch.Tensor,
                  cols_P: torch.Tensor, chunk: int = PAIR_CHUNK) -> torch.Tensor:
    """mat[rows_P, cols_P] (P values, differentiable), as the diagonals of chunk x chunk blocks."""
    if len(rows_P) == 0:
        return q_BD.new_zeros(0) + r_RD.sum() * 0
    return PairedValuesFunction.apply(q_BD, r_RD, rows_P, cols_P, distance, chunk)


def tile_label_masks(labels_B: torch.Tensor, ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, r0: int,
                     r1: int, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean masks of rows r0:r1 x columns c0:c1: same label but not the
    row's own sample, and different label (the conventions of `indices.matches_and_diffs`)."""
    same_TT = labels_B[r0:r1, None] == ref_labels_R[None, c0:c1]
    neg_TT = ~same_TT
    own_T = query_ref_index_B[r0:r1]
    rows_S = torch.where((own_T >= c0) & (own_T < c1))[0]
    same_TT[rows_S, own_T[rows_S] - c0] = False  # now the positives
    return same_TT, neg_TT


def tile_backward(distance: BaseDistance, q_TD: torch.Tensor, r_TD: torch.Tensor,
                  grad_fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute one tile under autograd and pull `grad_fn(mat_TT) = dL/dmat_TT` back to its rows.

    Returns (dq_TD, dr_TD). `grad_fn` sees the detached tile values (it may build masks from them).
    """
    q_TD = q_TD.detach().requires_grad_(True)
    r_TD = r_TD.detach().requires_grad_(True)
    with torch.enable_grad():
        mat_TT = distance_tile(distance, q_TD, r_TD)
    with torch.no_grad():
        grad_TT = grad_fn(mat_TT.detach())
    dq_TD, dr_TD = torch.autograd.grad(mat_TT, (q_TD, r_TD), grad_TT)
    return dq_TD, dr_TD


def normalised_pair(distance: BaseDistance, embeddings: torch.Tensor,
                    ref_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_BD, r_RD) normalised once; the reference is the same tensor when the batch meets itself."""
    q_BD = distance.maybe_normalize(embeddings)
    return q_BD, (q_BD if ref_emb is embeddings else distance.maybe_normalize(ref_emb))


def similarity_logits(distance: BaseDistance, mat_BR: torch.Tensor, temperature: float) -> torch.Tensor:
    """Larger-is-closer logits of a distance matrix (or tile): mat / t for similarities, -mat / t for distances."""
    return (mat_BR if distance.is_inverted else -mat_BR) / temperature


def similarity_tile_fn(distance: BaseDistance,
                       temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """logits_fn(q_TD, r_TD) = +-mat**power / temperature of already normalised rows (+ for similarities)."""
    sign = 1.0 if distance.is_inverted else -1.0

    def logits_fn(q_TD: torch.Tensor, r_TD: torch.Tensor) -> torch.Tensor:
        return sign * distance_tile(distance, q_TD, r_TD) / temperature

    return logits_fn

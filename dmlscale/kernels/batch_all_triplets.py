"""Streamed batch-all triplet loss: every valid triplet's term, summed without listing the triplets.

Legend: B query rows, R reference rows, D feature size, T tile size, P positive pairs (a_P, p_P),
C a chunk of at most T pairs spanning anchor rows a0:a1 (A rows), ap_P the pair values d_ap.

For each positive pair (a, p) and each negative n of a (different label), with v = d_ap - d_an + m
(s_an - s_ap + m for a similarity) the term is l(v), the loss's `per_triplet_loss` ([v]_+, or
softplus(v) with `smooth_loss`). A reducer filter f (AvgNonZero: l > 0) decides which terms count:
    total = sum_{(a,p,n): f(l)} l(v),   count = #{(a,p,n): f(l)},   num_triplets = sum_P #neg(a_P).
The forward walks each chunk of pairs against the negatives in column tiles (an A x T tile of d_an
and a C x T block of terms at a time, A <= C <= T: memory O((B + R) D + P + T^2)). The
backward recomputes each tile under autograd: dtotal/dv = l'(v) f for every kept term, summed over n
for d_ap (a pair value, differentiated through `paired_values`) and over p for the d_an tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.distances import BaseDistance
from dmlscale.kernels.distance_tiles import distance_tile, paired_values, tile_backward
from dmlscale.kernels.label_pairs import negative_counts, pair_chunks, positive_pairs
from dmlscale.kernels.tiles import tiles


def _terms(spec, ap_C, an_CT, neg_CT):
    """(terms, kept mask, violations) of one C x T block."""
    violation_CT = spec["distance"].margin(ap_C[:, None], an_CT) + spec["margin"]
    loss_CT = spec["term_fn"](violation_CT)
    keep_CT = neg_CT if spec["keep_fn"] is None else neg_CT & spec["keep_fn"](loss_CT)
    return loss_CT, keep_CT, violation_CT


def _slope(term_fn, violation_CT):
    """dl/dv elementwise, by autograd on the term itself (exact for any per-triplet loss, e.g.
    softplus with its linear cut-off)."""
    with torch.enable_grad():
        v_CT = violation_CT.detach().requires_grad_(True)
        loss_CT = term_fn(v_CT)
        return torch.autograd.grad(loss_CT, v_CT, torch.ones_like(loss_CT))[0]


def _blocks(spec, a_P, labels_B, ref_labels_R, num_cols):
    """(s0, s1, a0, a1, c0, c1, rows_C, neg_CT) for every chunk of pairs and column tile."""
    for s0, s1, a0, a1 in pair_chunks(a_P, spec["tile"]):
        rows_C = a_P[s0:s1] - a0
        for _, _, c0, c1 in tiles(1, num_cols, spec["tile"]):
            neg_CT = (labels_B[a0:a1, None] != ref_labels_R[None, c0:c1])[rows_C]
            yield s0, s1, a0, a1, c0, c1, rows_C, neg_CT


class StreamedBatchAllFunction(torch.autograd.Function):
    """(total, count) of the kept batch-all terms; only `total` is differentiable (to q, r and ap)."""

    @staticmethod
    def forward(ctx, q_BD: torch.Tensor, r_RD: torch.Tensor, ap_P: torch.Tensor, a_P: torch.Tensor,
                labels_B: torch.Tensor, ref_labels_R: torch.Tensor, spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros((), dtype=torch.float64, device=q_BD.device)  # up to B R^2 terms: fp64 sum
        count = 0
        for s0, s1, a0, a1, c0, c1, rows_C, neg_CT in _blocks(spec, a_P, labels_B, ref_labels_R, r_RD.shape[0]):
            an_CT = distance_tile(spec["distance"], q_BD[a0:a1], r_RD[c0:c1])[rows_C]
            loss_CT, keep_CT, _ = _terms(spec, ap_P[s0:s1], an_CT, neg_CT)
            total += (loss_CT * keep_CT).sum(dtype=torch.float64)
            count += int(keep_CT.sum())
        ctx.save_for_backward(q_BD, r_RD, ap_P, a_P, labels_B, ref_labels_R)
        ctx.spec = spec
        count = torch.tensor(count)
        ctx.mark_non_differentiable(count)
        return total.to(q_BD.dtype), count

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_count: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q_BD, r_RD, ap_P, a_P, labels_B, ref_labels_R = ctx.saved_tensors
        spec, distance = ctx.spec, ctx.spec["distance"]
        dq_BD, dr_RD, dap_P = torch.zeros_like(q_BD), torch.zeros_like(r_RD), torch.zeros_like(ap_P)
        ap_sign = -1.0 if distance.is_inverted else 1.0  # dv/d(d_ap); dv/d(d_an) = -ap_sign
        for s0, s1, a0, a1, c0, c1, rows_C, neg_CT in _blocks(spec, a_P, labels_B, ref_labels_R, r_RD.shape[0]):
            def grad_fn(an_AT):
                _, keep_CT, violation_CT = _terms(spec, ap_P[s0:s1], an_AT[rows_C], neg_CT)
                dv_CT = _slope(spec["term_fn"], violation_CT) * keep_CT * grad_total
                dap_P[s0:s1] += ap_sign * dv_CT.sum(dim=1)
                return torch.zeros_like(an_AT).index_add_(0, rows_C, dv_CT, alpha=-ap_sign)

            dq_AD, dr_TD = tile_backward(distance, q_BD[a0:a1], r_RD[c0:c1], grad_fn)
            dq_BD[a0:a1] += dq_AD
            dr_RD[c0:c1] += dr_TD
        return dq_BD, dr_RD, dap_P, None, None, None, None


def streamed_batch_all(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor,
                       ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, *, margin: float,
                       term_fn: Callable[[torch.Tensor], torch.Tensor],
                       keep_fn: Callable[[torch.Tensor], torch.Tensor] | None,
                       tile: int) -> tuple[torch.Tensor | None, int, int]:
    """(total, count, num_triplets) of the batch-all triplet loss (see the module docstring); `total`
    is differentiable with respect to q_BD and r_RD. `term_fn(v)` is the elementwise term of a
    violation (TripletMarginLoss.per_triplet_loss), `keep_fn(terms)` the reducer's filter or None."""
    a_P, p_P = positive_pairs(labels_B, ref_labels_R, query_ref_index_B)
    if len(a_P) == 0:
        return None, 0, 0
    ap_P = paired_values(distance, q_BD, r_RD, a_P, p_P)
    spec = {"distance": distance, "margin": margin, "term_fn": term_fn, "keep_fn": keep_fn, "tile": tile}
    total, count = StreamedBatchAllFunction.apply(q_BD, r_RD, ap_P, a_P, labels_B, ref_labels_R, spec)
    return total, int(count), int(negative_counts(labels_B, ref_labels_R)[a_P].sum())

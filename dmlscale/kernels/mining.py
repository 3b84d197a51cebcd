"""Streamed mining: batch-hard and triplet-margin triplets found tile by tile, never a B x R matrix.

Legend: B query rows, R reference rows, T tile size, P positive pairs (a_P, p_P) sorted by anchor,
then positive; *_B one value per anchor; mat values are distances (or similarities: `is_inverted`).

Batch-hard keeps, per anchor, a running farthest positive and closest negative over the column
tiles (ties go to the lowest column, as a row max/min does). Triplet-margin mining lists the
positive pairs from the labels alone (a sort, no mask), then walks the negatives of each chunk of
pairs in column tiles, keeping the triplets whose gap d_an - d_ap passes the miner's test. Both
return exactly what BatchHardMiner / TripletMarginMiner return on the materialised matrix. Memory:
O((B + R) D + P + T^2) plus the triplets returned.
"""

from __future__ import annotations

import torch

from dmlscale.distances import BaseDistance
from dmlscale.kernels.distance_tiles import distance_tile, paired_values, tile_label_masks
from dmlscale.kernels.label_pairs import negative_counts, pair_chunks, positive_pairs
from dmlscale.kernels.tiles import tiles


def margin_keep(gap: torch.Tensor, margin: float, type_of_triplets: str) -> torch.Tensor:
    """The test on gap = d_an - d_ap (s_ap - s_an for a similarity) of each type_of_triplets."""
    if type_of_triplets == "easy":
        return gap > margin
    keep = gap <= margin
    if type_of_triplets == "hard":
        keep &= gap <= 0
    elif type_of_triplets == "semihard":
        keep &= gap > 0
    return keep


def _in_range(mat_TT, allowed):
    return ~((mat_TT > allowed[1]) | (mat_TT < allowed[0]))


@torch.no_grad()
def streamed_hardest(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor,
                     ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, tile: int,
                     allowed_pos_range: tuple[float, float] | None = None,
                     allowed_neg_range: tuple[float, float] | None = None) -> tuple[torch.Tensor, ...]:
    """Batch-hard triplets: (a, p, n, d_ap, d_an) for every anchor with an admissible positive and negative."""
    num_rows = q_BD.shape[0]
    pos_value_B = torch.zeros(num_rows, dtype=q_BD.dtype, device=q_BD.device)
    neg_value_B = torch.zeros_like(pos_value_B)
    pos_index_B = torch.zeros(num_rows, dtype=torch.long, device=q_BD.device)
    neg_index_B = torch.zeros_like(pos_index_B)
    has_pos_B = torch.zeros(num_rows, dtype=torch.bool, device=q_BD.device)
    has_neg_B = torch.zeros_like(has_pos_B)
    for r0, r1, c0, c1 in tiles(num_rows, r_RD.shape[0], tile):
        mat_TT = distance_tile(distance, q_BD[r0:r1], r_RD[c0:c1])
        pos_TT, neg_TT = tile_label_masks(labels_B, ref_labels_R, query_ref_index_B, r0, r1, c0, c1)
        if allowed_pos_range is not None:
            pos_TT &= _in_range(mat_TT, allowed_pos_range)
        if allowed_neg_range is not None:
            neg_TT &= _in_range(mat_TT, allowed_neg_range)
        # farthest positive, closest negative: a max for one side of a distance, a min for the other
        for ok_TT, value_B, index_B, has_B, take_max in (
                (pos_TT, pos_value_B, pos_index_B, has_pos_B, not distance.is_inverted),
                (neg_TT, neg_value_B, neg_index_B, has_neg_B, distance.is_inverted)):
            masked_TT = mat_TT.masked_fill(~ok_TT, float("-inf") if take_max else float("inf"))
            best_T, best_index_T = masked_TT.max(dim=1) if take_max else masked_TT.min(dim=1)
            ok_T = ok_TT.any(dim=1)
            strictly_better_T = best_T > value_B[r0:r1] if take_max else best_T < value_B[r0:r1]
            better_T = ok_T & (~has_B[r0:r1] | strictly_better_T)  # ties keep the lower column
            value_B[r0:r1] = torch.where(better_T, best_T, value_B[r0:r1])
            index_B[r0:r1] = torch.where(better_T, best_index_T + c0, index_B[r0:r1])
            has_B[r0:r1] |= ok_T
    keep_B = has_pos_B & has_neg_B
    anchors = torch.where(keep_B)[0]
    return anchors, pos_index_B[keep_B], neg_index_B[keep_B], pos_value_B[keep_B], neg_value_B[keep_B]


@torch.no_grad()
def streamed_margin_triplets(distance: BaseDistance, q_BD: torch.Tensor, r_RD: torch.Tensor, labels_B: torch.Tensor,
                             ref_labels_R: torch.Tensor, query_ref_index_B: torch.Tensor, margin: float,
                             type_of_triplets: str,
                             tile: int) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, float]]:
    """TripletMarginMiner's triplets (a, p, n), ordered by a, then p, then n, and the mean d_ap,
    d_an and gap over every valid triplet (the miner's statistics)."""
    a_P, p_P = positive_pairs(labels_B, ref_labels_R, query_ref_index_B)
    ap_P = paired_values(distance, q_BD, r_RD, a_P, p_P)
    num_cols = r_RD.shape[0]
    found, sums = [], torch.zeros(3, dtype=torch.float64, device=q_BD.device)  # sums of d_ap, d_an, gap
    for s0, s1, a0, a1 in pair_chunks(a_P, tile):
        rows_C = a_P[s0:s1] - a0
        keys = []
        for _, _, c0, c1 in tiles(1, num_cols, tile):
            an_AT = distance_tile(distance, q_BD[a0:a1], r_RD[c0:c1])
            neg_CT = (labels_B[a0:a1, None] != ref_labels_R[None, c0:c1])[rows_C]
            an_CT = an_AT[rows_C]
            gap_CT = distance.margin(an_CT, ap_P[s0:s1, None])
            sums += torch.stack([(ap_P[s0:s1, None] * neg_CT).sum(), (an_CT * neg_CT).sum(),
                                 (gap_CT * neg_CT).sum()]).double()
            pair_K, col_K = torch.where(neg_CT & margin_keep(gap_CT, margin, type_of_triplets))
            keys.append((pair_K + s0) * num_cols + col_K + c0)
        keys_K = torch.sort(torch.cat(keys)).values
        found.append(keys_K)
    keys_K = torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=q_BD.device)
    pair_K, n_K = keys_K // num_cols, keys_K % num_cols
    num_triplets = int(negative_counts(labels_B, ref_labels_R)[a_P].sum())
    means = (sums / max(num_triplets, 1)).tolist()
    return (a_P[pair_K], p_P[pair_K], n_K), dict(zip(("pos_pair_dist", "neg_pair_dist", "avg_triplet_margin"), means))

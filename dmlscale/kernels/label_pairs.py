"""Pairs from labels without a B x R mask: the positive pairs by a sort of the reference labels,
the negatives of each row and the pair counts by label histograms.

Legend: B query rows, R reference rows, P positive pairs (a_P, p_P) sorted by anchor, then positive;
query_ref_index_B[i] the reference row holding query row i itself (-1: none), never a positive of i.
Memory O(B + R + P) (pairs) or O(B + R) (counts).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def positive_pairs(labels_B: torch.Tensor, ref_labels_R: torch.Tensor,
                   query_ref_index_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_P, p_P): every same-label (query, reference) pair except the self pairs, in row-major order
    (the order of `torch.where` on the mask), built from a stable sort of the reference labels."""
    order_R = torch.argsort(ref_labels_R, stable=True)
    sorted_R = ref_labels_R[order_R].contiguous()
    labels_B = labels_B.to(sorted_R.dtype)
    start_B = torch.searchsorted(sorted_R, labels_B, side="left")
    count_B = torch.searchsorted(sorted_R, labels_B, side="right") - start_B
    a_P = torch.repeat_interleave(torch.arange(len(labels_B), device=labels_B.device), count_B)
    first_P = torch.repeat_interleave(torch.cumsum(count_B, 0) - count_B, count_B)
    p_P = order_R[start_B[a_P] + torch.arange(len(a_P), device=a_P.device) - first_P]
    keep_P = p_P != query_ref_index_B[a_P]
    return a_P[keep_P], p_P[keep_P]


def negative_counts(labels_B: torch.Tensor, ref_labels_R: torch.Tensor) -> torch.Tensor:
    """Number of different-label reference rows of each query row (B)."""
    sorted_R = torch.sort(ref_labels_R).values
    same_B = torch.searchsorted(sorted_R, labels_B, right=True) - torch.searchsorted(sorted_R, labels_B)
    return len(ref_labels_R) - same_B


def pair_counts(labels_B: torch.Tensor, ref_labels_R: torch.Tensor,
                query_ref_index_B: torch.Tensor | None) -> tuple[int, int]:
    """Numbers of positive and negative pairs implied by the labels (self pairs are not positives)."""
    values, inverse = torch.unique(torch.cat([labels_B, ref_labels_R]), return_inverse=True)
    query_counts = torch.bincount(inverse[: len(labels_B)], minlength=len(values))
    ref_counts = torch.bincount(inverse[len(labels_B):], minlength=len(values))
    same = int((query_counts * ref_counts).sum())
    own = 0 if query_ref_index_B is None else int((query_ref_index_B >= 0).sum())
    return same - own, len(labels_B) * len(ref_labels_R) - same


def pair_chunks(a_P: torch.Tensor, chunk: int) -> Iterator[tuple[int, int, int, int]]:
    """(s0, s1, a0, a1): consecutive runs of at most `chunk` pairs and the anchor rows a0:a1 they span."""
    for s0 in range(0, len(a_P), chunk):
        s1 = min(s0 + chunk, len(a_P))
        yield s0, s1, int(a_P[s0]), int(a_P[s1 - 1]) + 1

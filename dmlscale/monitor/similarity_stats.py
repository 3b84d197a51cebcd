"""Statistics of the global similarity matrix, streamed tile by tile (never Q x R at once).

Mean positive, mean negative and mean hardest-negative similarity, and the fraction of active
triplets; plus samples of positive and negative similarities for histograms (every pair when there
are at most `max_samples`, else `max_samples` seeded uniform draws with replacement).

Anchors are this rank's queries; the reference is the global batch (all ranks' rows). For anchor a:
positives p share its label (its own row excluded), negatives n have another label; a triplet
(a, p, n) is *active* when s_an > s_ap - margin, i.e. its hinge [s_an - s_ap + margin]+ is nonzero.
CLIP is the case where query i's only positive is text row `row_offset + i`.
Counters are plain sums, so ranks can add them (`merge`, or an all-reduce in the trainer).

Shapes: Q queries (anchors), R reference rows, D features, T anchors per tile, C reference columns
per tile, P most positives of one anchor in a row tile, K kept samples, L distinct labels,
n / m pairs listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dmlscale.param_checks import check_positive_int, check_real


@dataclass
class SimilarityStats:
    """Sums and counts over anchors' positive and negative pairs, plus bounded value samples."""

    num_pos: int = 0
    sum_pos: float = 0.0
    num_neg: int = 0
    sum_neg: float = 0.0
    num_anchors_with_neg: int = 0
    sum_hardest_neg: float = 0.0
    num_triplets: int = 0
    num_active_triplets: int = 0
    pos_samples_K: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    neg_samples_K: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))

    def metrics(self, prefix: str = "sim/") -> dict[str, float]:
        """Means and the active-triplet fraction (NaN where nothing was counted)."""
        def ratio(num: float, den: int) -> float:
            return num / den if den else math.nan

        return {
            f"{prefix}pos_mean": ratio(self.sum_pos, self.num_pos),
            f"{prefix}neg_mean": ratio(self.sum_neg, self.num_neg),
            f"{prefix}hardest_neg_mean": ratio(self.sum_hardest_neg, self.num_anchors_with_neg),
            f"{prefix}active_triplet_fraction": ratio(self.num_active_triplets, self.num_triplets),
        }

    def merge(self, other: SimilarityStats) -> SimilarityStats:
        """The statistics of both sets of anchors (samples concatenated, not re-drawn)."""
        return SimilarityStats(
            self.num_pos + other.num_pos, self.sum_pos + other.sum_pos,
            self.num_neg + other.num_neg, self.sum_neg + other.sum_neg,
            self.num_anchors_with_neg + other.num_anchors_with_neg, self.sum_hardest_neg + other.sum_hardest_neg,
            self.num_triplets + other.num_triplets, self.num_active_triplets + other.num_active_triplets,
            torch.cat([self.pos_samples_K, other.pos_samples_K]), torch.cat([self.neg_samples_K, other.neg_samples_K]))


def clip_similarity_stats(image_QD: torch.Tensor, text_RD: torch.Tensor, *, row_offset: int = 0,
                          margin: float = 0.2, tile_size: int = 1024, max_samples: int = 10_000,
                          seed: int = 0, normalize: bool = True) -> SimilarityStats:
    """Image-to-text statistics: image i's positive is text `row_offset + i`, every other text is a
    negative (one positive, R - 1 negatives and R - 1 triplets per anchor)."""
    _check_features(image_QD, text_RD)
    num_q, num_r = image_QD.shape[0], text_RD.shape[0]
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or not 0 <= row_offset <= num_r - num_q:
        raise ValueError(f"clip_similarity_stats: row_offset must be an int in [0, {num_r - num_q}] "
                         f"for {num_q} images and {num_r} texts, got {row_offset!r}")
    labels_Q = torch.arange(row_offset, row_offset + num_q, device=image_QD.device)
    labels_R = torch.arange(num_r, device=text_RD.device)
    return _streamed_stats(image_QD, text_RD, labels_Q, labels_R, None, margin, tile_size, max_samples, seed,
                           normalize)


def label_similarity_stats(emb_QD: torch.Tensor, labels_Q: torch.Tensor, *, ref_emb_RD: torch.Tensor | None = None,
                           ref_labels_R: torch.Tensor | None = None, row_offset: int | None = None,
                           margin: float = 0.2, tile_size: int = 1024, max_samples: int = 10_000,
                           seed: int = 0, normalize: bool = True) -> SimilarityStats:
    """Metric-learning statistics from labels. Without `ref_emb_RD` the reference is the batch
    itself. `row_offset`: the reference row of query 0 (query i is row row_offset + i and is not its
    own positive); None when the queries are not in the reference (and 0 without `ref_emb_RD`)."""
    if (ref_emb_RD is None) != (ref_labels_R is None):
        raise ValueError("label_similarity_stats: pass ref_emb_RD and ref_labels_R together, got "
                         f"ref_emb_RD={'a tensor' if ref_emb_RD is not None else None}, "
                         f"ref_labels_R={'a tensor' if ref_labels_R is not None else None}")
    if ref_emb_RD is None:
        ref_emb_RD, ref_labels_R, row_offset = emb_QD, labels_Q, 0 if row_offset is None else row_offset
    _check_features(emb_QD, ref_emb_RD)
    num_q, num_r = emb_QD.shape[0], ref_emb_RD.shape[0]
    for name, labels, size in (("labels_Q", labels_Q, num_q), ("ref_labels_R", ref_labels_R, num_r)):
        if labels.shape != (size,):
            raise ValueError(f"label_similarity_stats: {name} must have shape ({size},), got {tuple(labels.shape)}")
    self_Q = None
    if row_offset is not None:
        if isinstance(row_offset, bool) or not isinstance(row_offset, int) or not 0 <= row_offset <= num_r - num_q:
            raise ValueError(f"label_similarity_stats: row_offset must be None or an int in [0, {num_r - num_q}], "
                             f"got {row_offset!r}")
        self_Q = torch.arange(row_offset, row_offset + num_q, device=emb_QD.device)
    return _streamed_stats(emb_QD, ref_emb_RD, labels_Q, ref_labels_R, self_Q, margin, tile_size, max_samples,
                           seed, normalize)


def _check_features(query_QD: torch.Tensor, ref_RD: torch.Tensor) -> None:
    if query_QD.ndim != 2 or ref_RD.ndim != 2 or query_QD.shape[1] != ref_RD.shape[1]:
        raise ValueError("similarity stats: features must be 2-D with the same width, got shapes "
                         f"{tuple(query_QD.shape)} and {tuple(ref_RD.shape)}")


class _LabelIndex:
    """Reference rows sorted by label, so that each anchor's positives and negatives can be listed or
    drawn by position (the u-th positive / negative of anchor a) without building the matrix."""

    def __init__(self, labels_Q: torch.Tensor, labels_R: torch.Tensor, self_Q: torch.Tensor | None):
        labels_Q, labels_R = labels_Q.long(), labels_R.long()
        self.order_R = torch.argsort(labels_R, stable=True)
        sorted_R = labels_R[self.order_R]
        self.start_Q = torch.searchsorted(sorted_R, labels_Q, side="left")
        self.count_Q = torch.searchsorted(sorted_R, labels_Q, side="right") - self.start_Q
        self.has_self_Q = torch.zeros_like(labels_Q, dtype=torch.bool)
        self.self_sorted_Q = torch.zeros_like(labels_Q)
        if self_Q is not None:
            self.has_self_Q = labels_R[self_Q] == labels_Q
            rank_R = torch.empty_like(self.order_R)
            rank_R[self.order_R] = torch.arange(labels_R.numel(), device=labels_R.device)
            self.self_sorted_Q = rank_R[self_Q]
        self.num_pos_Q = self.count_Q - self.has_self_Q.long()
        self.num_neg_Q = labels_R.numel() - self.count_Q

    def positive_refs(self, anchor_n: torch.Tensor, u_n: torch.Tensor) -> torch.Tensor:
        """Reference row of the u-th positive of each anchor (its own row skipped)."""
        at_n = self.start_Q[anchor_n] + u_n
        at_n += (self.has_self_Q[anchor_n] & (at_n >= self.self_sorted_Q[anchor_n])).long()
        return self.order_R[at_n]

    def negative_refs(self, anchor_n: torch.Tensor, u_n: torch.Tensor) -> torch.Tensor:
        """Reference row of the u-th negative of each anchor (the rows outside its label's run)."""
        start_n = self.start_Q[anchor_n]
        return self.order_R[torch.where(u_n < start_n, u_n, u_n + self.count_Q[anchor_n])]


def _all_pairs(num_per_anchor_T: torch.Tensor, first_anchor: int = 0):
    """Every (anchor, u) with u < num_per_anchor[anchor], grouped by anchor."""
    anchor_n = torch.repeat_interleave(torch.arange(num_per_anchor_T.numel(), device=num_per_anchor_T.device),
                                       num_per_anchor_T)
    group_start_T = torch.cumsum(num_per_anchor_T, 0) - num_per_anchor_T
    u_n = torch.arange(anchor_n.numel(), device=anchor_n.device) - group_start_T[anchor_n]
    return anchor_n + first_anchor, u_n


def _sample(num_per_anchor_Q, refs, query_QD, ref_RD, max_samples, generator) -> torch.Tensor:
    """Similarities of all pairs when there are at most `max_samples`, else of `max_samples` pairs
    drawn uniformly with replacement (anchor in proportion to its pairs, then one of them)."""
    total = int(num_per_anchor_Q.sum())
    if max_samples == 0:
        return torch.empty(0, dtype=torch.float64)
    if total <= max_samples:
        anchor_K, u_K = _all_pairs(num_per_anchor_Q)
    else:
        anchor_K = torch.multinomial(num_per_anchor_Q.double(), max_samples, replacement=True, generator=generator)
        uniform_K = torch.rand(max_samples, generator=generator, dtype=torch.float64, device=generator.device)
        size_K = num_per_anchor_Q[anchor_K]
        u_K = torch.minimum((uniform_K * size_K).long(), size_K - 1)
    ref_K = refs(anchor_K, u_K)
    return (query_QD[anchor_K] * ref_RD[ref_K]).sum(1).double().cpu()


@torch.no_grad()
def _streamed_stats(query_QD, ref_RD, labels_Q, labels_R, self_Q, margin, tile_size, max_samples, seed,
                    normalize) -> SimilarityStats:
    """One pass over T x C tiles. Each row tile first lists its anchors' positive similarities
    (sorted, minus the margin, +inf padded to T x P); a binary search then counts, for every tile
    entry s, the positives with s_ap - margin < s; same-label entries (positives, self) are few and
    are taken back out before the row maxima (hardest negatives). The negatives' sum needs no tiles:
    (sum of queries) . (sum of references) minus the same per label."""
    margin = check_real("similarity stats", "margin", margin)
    check_positive_int("similarity stats", "tile_size", tile_size)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0:
        raise ValueError(f"similarity stats: max_samples must be an int >= 0, got {max_samples!r}")
    if normalize:
        query_QD, ref_RD = F.normalize(query_QD, dim=1), F.normalize(ref_RD, dim=1)
    index = _LabelIndex(labels_Q, labels_R, self_Q)
    generator = torch.Generator(device=query_QD.device).manual_seed(seed)
    stats = SimilarityStats(
        num_pos=int(index.num_pos_Q.sum()), num_neg=int(index.num_neg_Q.sum()),
        sum_neg=_sum_of_negatives(query_QD, ref_RD, labels_Q, labels_R),
        num_anchors_with_neg=int((index.num_neg_Q > 0).sum()),
        num_triplets=int((index.num_pos_Q * index.num_neg_Q).sum()),
        pos_samples_K=_sample(index.num_pos_Q, index.positive_refs, query_QD, ref_RD, max_samples, generator),
        neg_samples_K=_sample(index.num_neg_Q, index.negative_refs, query_QD, ref_RD, max_samples, generator))
    num_q, num_r = query_QD.shape[0], ref_RD.shape[0]
    for row_start in range(0, num_q, tile_size):
        rows = slice(row_start, min(row_start + tile_size, num_q))
        q_TD = query_QD[rows]
        anchor_n, u_n = _all_pairs(index.num_pos_Q[rows], row_start)
        pos_n = (query_QD[anchor_n] * ref_RD[index.positive_refs(anchor_n, u_n)]).sum(1)
        stats.sum_pos += pos_n.double().sum().item()
        thresholds_TP = _padded_sorted(anchor_n - row_start, u_n, pos_n, index.num_pos_Q[rows]) - margin
        same_anchor_m, u_m = _all_pairs(index.count_Q[rows], row_start)  # every same-label pair, self included
        same_ref_m = index.order_R[index.start_Q[same_anchor_m] + u_m]
        hardest_T = torch.full((q_TD.shape[0],), -math.inf, dtype=torch.float64, device=q_TD.device)
        for start in range(0, num_r, tile_size):
            stop = min(start + tile_size, num_r)
            sim_TC = q_TD @ ref_RD[start:stop].T
            in_tile_m = (same_ref_m >= start) & (same_ref_m < stop)
            same_at = (same_anchor_m[in_tile_m] - row_start, same_ref_m[in_tile_m] - start)
            if thresholds_TP.shape[1]:
                stats.num_active_triplets += _count_below(thresholds_TP, sim_TC) - _count_below(
                    thresholds_TP[same_at[0]], sim_TC[same_at][:, None])
            sim_TC[same_at] = -math.inf
            hardest_T = torch.maximum(hardest_T, sim_TC.amax(1).double())
        stats.sum_hardest_neg += hardest_T[index.num_neg_Q[rows] > 0].sum().item()
    return stats


def _count_below(thresholds_TP: torch.Tensor, sim_TC: torch.Tensor) -> int:
    """Number of (row, threshold, entry) with threshold < entry: one comparison when P = 1 (CLIP),
    else a binary search per entry in the row's sorted thresholds."""
    if thresholds_TP.shape[1] == 1:
        return int(torch.count_nonzero(sim_TC > thresholds_TP))
    return int(torch.searchsorted(thresholds_TP, sim_TC, side="left").sum())


def _sum_of_negatives(query_QD, ref_RD, labels_Q, labels_R) -> float:
    """Sum of s_ar over pairs with different labels, from per-label feature sums (float64)."""
    _, label_ids = torch.unique(torch.cat([labels_Q, labels_R]).long(), return_inverse=True)
    num_labels = int(label_ids.max()) + 1 if label_ids.numel() else 0
    ids_Q, ids_R = label_ids[: labels_Q.numel()], label_ids[labels_Q.numel():]
    sums_query_LD = torch.zeros(num_labels, query_QD.shape[1], dtype=torch.float64, device=query_QD.device)
    sums_ref_LD = torch.zeros_like(sums_query_LD)
    sums_query_LD.index_add_(0, ids_Q, query_QD.double())
    sums_ref_LD.index_add_(0, ids_R, ref_RD.double())
    all_pairs = sums_query_LD.sum(0) @ sums_ref_LD.sum(0)
    same_label = (sums_query_LD * sums_ref_LD).sum()
    return (all_pairs - same_label).item()


def _padded_sorted(anchor_n, u_n, values_n, num_pos_T) -> torch.Tensor:
    """Each anchor's positive similarities sorted ascending, padded with +inf to T x P."""
    width = int(num_pos_T.max()) if num_pos_T.numel() else 0
    padded_TP = torch.full((num_pos_T.numel(), width), math.inf, dtype=values_n.dtype, device=values_n.device)
    padded_TP[anchor_n, u_n] = values_n
    return padded_TP.sort(dim=1).values

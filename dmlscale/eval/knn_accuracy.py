"""The kNN metrics of PML's AccuracyCalculator with a caller's `knn_func` and / or `label_comparison_fn`.

Legend: N queries, M references, U distinct query labels, k neighbours, L label columns (labels may be
(N, L) when label_comparison_fn reads several columns).

PML's steps, in one pass over the whole kNN label matrix (not chunked: the search is the caller's):
- U distinct query labels (torch.unique(dim=0)); count_U = the references each matches under the function;
- a label is lone when no reference matches it (with ref_includes_query: count - fn(label, label) <= 0); the
  queries holding a lone label (by equality) are left out of every kNN metric;
- each query's R = count of its label, minus 1 with ref_includes_query (PML subtracts 1 there, whatever
  fn(label, label) says);
- k: "max_bin_count" = max count (minus 1), None = all references (minus 1), or the int given;
- knn_func(query, k, reference, ref_includes_query) -> (distances, indices); a neighbour is correct when
  fn(query label, neighbour label) holds; the scores are those of dmlscale.eval.metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from dmlscale.eval.metric import KNN_METRICS, average, per_query_scores

LabelComparison = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def label_match_counts(unique_U: torch.Tensor, reference_labels: torch.Tensor,
                       label_comparison_fn: LabelComparison | None) -> torch.Tensor:
    """count_U: how many reference labels each distinct query label matches."""
    if label_comparison_fn is None:
        return (unique_U[:, None] == reference_labels[None, :]).sum(dim=1)
    return torch.stack([label_comparison_fn(unique_U[u:u + 1], reference_labels).sum()
                        for u in range(len(unique_U))]).long()


def determine_k(k: int | str | None, count_U: torch.Tensor, num_reference: int, ref_includes_query: bool,
                metrics: tuple[str, ...]) -> int:
    """PML's determine_k (with its warning when an int k truncates R-precision and MAP@R)."""
    max_bin_count = int(count_U.max())
    if k == "max_bin_count":
        return max_bin_count - int(ref_includes_query)
    if k is None:
        return num_reference - int(ref_includes_query)
    if k < max_bin_count and {"r_precision", "mean_average_precision_at_r"} & set(metrics):
        warnings.warn(f"AccuracyCalculator: k={k} is less than the max bin count {max_bin_count}, so r_precision "
                      "and mean_average_precision_at_r are truncated (as in PML); use k='max_bin_count'")
    return k


def knn_func_accuracy(query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor,
                      reference_labels: torch.Tensor, metrics: tuple[str, ...], *, ref_includes_query: bool,
                      k: int | str | None, knn_func: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                      label_comparison_fn: LabelComparison | None, avg_of_avgs: bool,
                      return_per_class: bool) -> dict[str, float | list[float]]:
    """{kNN metric: value (or per-class list)} for the metrics of `metrics` that need neighbours."""
    compare = torch.eq if label_comparison_fn is None else label_comparison_fn
    unique_U, label_of_N = torch.unique(query_labels, dim=0, return_inverse=True)
    count_U = label_match_counts(unique_U, reference_labels, label_comparison_fn)
    if ref_includes_query:
        lone_U = count_U - compare(unique_U, unique_U).long() <= 0
    else:
        lone_U = count_U == 0
    kept_N = ~lone_U[label_of_N]
    relevant_N = count_U[label_of_N] - int(ref_includes_query)
    num_k = determine_k(k, count_U, len(reference), ref_includes_query, metrics)
    _, indices_Nk = knn_func(query, num_k, reference, ref_includes_query)
    wanted = [m for m in metrics if m in KNN_METRICS]
    if not bool(kept_N.any()):
        warnings.warn("AccuracyCalculator: none of the query labels are in the reference set")
        nan = [float("nan")] * len(unique_U) if return_per_class else float("nan")
        return {m: nan for m in wanted}
    knn_labels = reference_labels[indices_Nk.to(reference_labels.device)][kept_N]
    labels_n = query_labels[kept_N]
    correct_nk = compare(labels_n[:, None], knn_labels).bool()
    if correct_nk.shape != knn_labels.shape[:2]:
        raise ValueError(f"label_comparison_fn must return one value per (query, neighbour) pair, shape "
                         f"{tuple(knn_labels.shape[:2])}; got shape {tuple(correct_nk.shape)}")
    scores = per_query_scores(correct_nk, relevant_N[kept_N], None)
    return {m: average(scores[m].cpu(), labels_n.cpu(), avg_of_avgs, return_per_class) for m in wanted}

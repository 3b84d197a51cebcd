"""PML's AccuracyCalculator as a class, built on the chunked `metric_accuracy` (same keys, same numbers).

Legend: N queries, M references, D embedding size.

Without knn_func the neighbour search is dmlscale's exact chunked one, chosen with `distance` ("euclidean" is
PML's default FaissKNN, "cosine" / "dot" stand for CustomKNN(CosineSimilarity()) /
CustomKNN(DotProductSimilarity(normalize_embeddings=False))). `knn_func(query, k, reference,
ref_includes_query)` (CustomKNN, FaissKNN or any such callable) and `label_comparison_fn(a, b)` take PML's
path (knn_accuracy.py), where, as in PML, embeddings are cast to float32 and labels to float (a comparison
function may read several label columns). return_per_class gives each kNN metric as a list of per-class
values (sorted class order), NMI / AMI stay numbers. `kmeans_func(query, num_clusters)` is supported as in
PML. One deliberate difference: `requires_knn()` lists "mean_reciprocal_rank" (PML's omits it, so PML cannot
compute that metric on its own: a TypeError there, a number here). A label_comparison_fn with NMI / AMI among
the metrics raises a ValueError (PML: NotImplementedError).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from dmlscale.eval.knn_accuracy import knn_func_accuracy
from dmlscale.eval.metric import CLUSTER_METRICS, KNN_METRICS, METRICS, metric_accuracy
from dmlscale.eval.topk import DEFAULT_CHUNK_SIZE, check_distance, chunked_topk

# PML orders its metrics as dir() lists its calculate_* methods: sorted, upper case first.
PML_ORDER = tuple(sorted(METRICS))


def _check_names(where: str, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (tuple, list)) or not set(value) <= set(METRICS):
        raise ValueError(f"AccuracyCalculator{where}: {name} must be a tuple of names among {PML_ORDER}, got {value!r}")
    return tuple(value)


def _select(available: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...]) -> tuple[str, ...]:
    """PML's get_function_dict: the available metrics that are included (all when include is empty), less exclude."""
    chosen = include or available
    return tuple(m for m in available if m in chosen and m not in exclude)


def _as_tensor(name: str, value: Any, device: torch.device | None) -> torch.Tensor:
    tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"AccuracyCalculator: {name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return tensor if device is None else tensor.to(device)


def _as_labels(name: str, value: Any, device: torch.device | None) -> torch.Tensor:
    """Integer labels; float labels (PML casts labels to float) are accepted when they hold whole numbers."""
    labels = _as_tensor(name, value, device)
    if labels.is_floating_point():
        if not bool(torch.all(labels == labels.round())):
            raise ValueError(f"AccuracyCalculator: {name} must hold whole numbers (class ids), got {labels.flatten()[:5]}")
        labels = labels.long()
    return labels


class AccuracyCalculator:
    """PML's AccuracyCalculator(include, exclude, avg_of_avgs, return_per_class, k, ...).get_accuracy(...).

    Metrics: precision_at_1, r_precision, mean_average_precision_at_r, mean_average_precision,
    mean_reciprocal_rank (kNN) and NMI, AMI (k-means on the queries). k: None (the full ranking),
    "max_bin_count" or a positive int. dmlscale-only keywords: distance, chunk_size, kmeans_seed.
    """

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), avg_of_avgs: bool = False,
                 return_per_class: bool = False, k: int | str | None = None,
                 label_comparison_fn: Callable[..., Any] | None = None, device: torch.device | str | None = None,
                 knn_func: Callable[..., Any] | None = None, kmeans_func: Callable[..., Any] | None = None, *,
                 distance: str = "euclidean", chunk_size: int = DEFAULT_CHUNK_SIZE, kmeans_seed: int = 0) -> None:
        include, exclude = _check_names("", "include", include), _check_names("", "exclude", exclude)
        if avg_of_avgs and return_per_class:
            raise ValueError("AccuracyCalculator: avg_of_avgs and return_per_class are mutually exclusive")
        for name, function in (("label_comparison_fn", label_comparison_fn), ("knn_func", knn_func)):
            if function is not None and not callable(function):
                raise ValueError(f"AccuracyCalculator: {name} must be None or callable, got {function!r}")
        if kmeans_func is not None and not callable(kmeans_func):
            raise ValueError(f"AccuracyCalculator: kmeans_func must be callable(query, num_clusters), got {kmeans_func!r}")
        if not (k is None or k == "max_bin_count" or (isinstance(k, int) and not isinstance(k, bool) and k > 0)):
            raise ValueError(f"AccuracyCalculator: k must be an integer greater than 0, None or 'max_bin_count', got {k!r}")
        check_distance("AccuracyCalculator", distance)
        self.original_metrics = _select(PML_ORDER, include, exclude)
        self.curr_metrics = self.original_metrics
        if label_comparison_fn is not None and set(self.original_metrics) & set(CLUSTER_METRICS):
            raise ValueError(f"AccuracyCalculator: label_comparison_fn={label_comparison_fn!r} cannot be combined "
                             f"with the clustering metrics {list(CLUSTER_METRICS)}; exclude them")
        self.label_comparison_fn = label_comparison_fn
        self.knn_func = knn_func
        self.avg_of_avgs = avg_of_avgs
        self.return_per_class = return_per_class
        self.k = k
        self.device = None if device is None else torch.device(device)
        self.kmeans_func = kmeans_func
        self.distance = distance
        self.chunk_size = chunk_size
        self.kmeans_seed = kmeans_seed

    def get_curr_metrics(self) -> list[str]:
        """The metrics of the last get_accuracy call (the constructor's before any call)."""
        return list(self.curr_metrics)

    def requires_clustering(self) -> list[str]:
        return list(CLUSTER_METRICS)

    def requires_knn(self) -> list[str]:
        return sorted(KNN_METRICS)

    def description(self) -> str:
        return "avg_of_avgs" if self.avg_of_avgs else ""

    def get_accuracy(self, query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor | None = None,
                     reference_labels: torch.Tensor | None = None, ref_includes_query: bool = False,
                     include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict[str, float | list[float]]:
        """{metric: value}; include/exclude narrow the constructor's metrics for this call, as in PML."""
        include = _check_names(".get_accuracy", "include", include)
        exclude = _check_names(".get_accuracy", "exclude", exclude)
        self.curr_metrics = _select(self.original_metrics, include, exclude)
        if self.knn_func is not None or self.label_comparison_fn is not None:
            return self._pml_path(query, query_labels, reference, reference_labels, ref_includes_query)
        query_ND = _as_tensor("query", query, self.device)
        query_labels_N = _as_labels("query_labels", query_labels, self.device)
        reference_MD = None if reference is None else _as_tensor("reference", reference, self.device)
        reference_labels_M = (None if reference_labels is None
                              else _as_labels("reference_labels", reference_labels, self.device))
        options = dict(ref_includes_query=ref_includes_query, k=self.k, distance=self.distance,
                       avg_of_avgs=self.avg_of_avgs, chunk_size=self.chunk_size, kmeans_seed=self.kmeans_seed,
                       return_per_class=self.return_per_class)
        chosen = [m for m in self.curr_metrics if self.kmeans_func is None or m in KNN_METRICS]
        results = metric_accuracy(query_ND, query_labels_N, reference_MD, reference_labels_M,
                                  include=tuple(chosen), **options) if chosen else {}
        if self.kmeans_func is not None and set(self.curr_metrics) & set(CLUSTER_METRICS):
            results.update(self._custom_clustering(query_ND, query_labels_N))
        return {m: results[m] for m in self.curr_metrics}

    def _pml_path(self, query: Any, query_labels: Any, reference: Any, reference_labels: Any,
                  ref_includes_query: bool) -> dict[str, float | list[float]]:
        """With knn_func or label_comparison_fn: PML's float casts, search and label matching."""
        if reference is None:
            reference, reference_labels, ref_includes_query = query, query_labels, True
        query, reference = (_as_tensor(n, v, self.device).float() for n, v in (("query", query),
                                                                              ("reference", reference)))
        query_labels, reference_labels = (_as_tensor(n, v, self.device).float() for n, v in (
            ("query_labels", query_labels), ("reference_labels", reference_labels)))
        if len(query) != len(query_labels) or len(reference) != len(reference_labels):
            raise ValueError(f"AccuracyCalculator: {len(query)} queries with {len(query_labels)} labels, "
                             f"{len(reference)} references with {len(reference_labels)} labels")
        if ref_includes_query and not (torch.allclose(query, reference[:len(query)])
                                       and torch.allclose(query_labels, reference_labels[:len(query)])):
            raise ValueError("AccuracyCalculator: ref_includes_query=True needs the first len(query) reference rows "
                             "and labels to equal the queries and their labels")
        if self.label_comparison_fn is None and query_labels.ndim != 1:
            raise ValueError(f"AccuracyCalculator: labels of shape {tuple(query_labels.shape)} need a "
                             "label_comparison_fn; equality compares 1-D labels")
        results: dict[str, float | list[float]] = {}
        if set(self.curr_metrics) & set(KNN_METRICS):
            results = knn_func_accuracy(query, query_labels, reference, reference_labels, self.curr_metrics,
                                        ref_includes_query=ref_includes_query, k=self.k,
                                        knn_func=self.knn_func or self._default_knn,
                                        label_comparison_fn=self.label_comparison_fn, avg_of_avgs=self.avg_of_avgs,
                                        return_per_class=self.return_per_class)
        if set(self.curr_metrics) & set(CLUSTER_METRICS):
            if self.kmeans_func is not None:
                results.update(self._custom_clustering(query, query_labels.long()))
            else:
                results.update(metric_accuracy(query, query_labels.long(), include=tuple(
                    m for m in CLUSTER_METRICS if m in self.curr_metrics), kmeans_seed=self.kmeans_seed))
        return {m: results[m] for m in self.curr_metrics}

    def _default_knn(self, query: torch.Tensor, k: int, reference: torch.Tensor,
                     ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_topk(query, reference, k, distance=self.distance, chunk_size=self.chunk_size,
                            exclude_self=ref_includes_query)

    def _custom_clustering(self, query_ND: torch.Tensor, query_labels_N: torch.Tensor) -> dict[str, float]:
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        num_clusters = len(torch.unique(query_labels_N.flatten()))
        clusters = self.kmeans_func(query_ND, num_clusters)
        clusters = clusters.cpu().numpy() if isinstance(clusters, torch.Tensor) else np.asarray(clusters)
        truth = query_labels_N.cpu().numpy()
        scorers = {"NMI": normalized_mutual_info_score, "AMI": adjusted_mutual_info_score}
        return {m: float(scorers[m](truth, clusters)) for m in CLUSTER_METRICS if m in self.curr_metrics}

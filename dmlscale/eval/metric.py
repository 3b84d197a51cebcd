"""Metric-learning accuracy on labelled embeddings, with the semantics of PML's AccuracyCalculator.

Legend: N queries, M references, D embedding size, c rows in a query chunk, k neighbours.

Same keys, same numbers as `AccuracyCalculator().get_accuracy` (tested), computed one query chunk at a
time: precision@1, R-precision and MAP@R need only the max_bin_count nearest neighbours, and the mean
reciprocal rank with k=None (the full ranking) comes from the exact rank of each query's first
positive, so nothing of size N x M is ever built. Only "mean_average_precision" with k=None (MAP over
the full ranking) sorts every reference for each query of a chunk (chunk_size x M, still linear).
NMI/AMI cluster the queries with k-means (faiss when installed, as PML does; else scikit-learn's
KMeans, whose clusters can differ slightly from faiss's).
"""

from __future__ import annotations

import warnings

import torch

from dmlscale.eval.topk import (DEFAULT_CHUNK_SIZE, check_distance, check_features, check_k, chunked_topk,
                                first_positive_rank, ordered_topk, resolve_backend, score_chunks)
from dmlscale.inputs import check_labels
from dmlscale.param_checks import check_positive_int

KNN_METRICS = ("mean_average_precision", "mean_average_precision_at_r", "mean_reciprocal_rank", "precision_at_1",
               "r_precision")
CLUSTER_METRICS = ("NMI", "AMI")
METRICS = KNN_METRICS + CLUSTER_METRICS


def check_integer_labels(name: str, labels: torch.Tensor, num_rows: int) -> None:
    check_labels(name, labels, num_rows)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def _chosen_metrics(include, exclude) -> list[str]:
    for name, value in (("include", include), ("exclude", exclude)):
        if not isinstance(value, (tuple, list)) or not set(value) <= set(METRICS):
            raise ValueError(f"metric_accuracy: {name} must be a tuple of names among {METRICS}, got {value!r}")
    return [m for m in (include or METRICS) if m not in exclude]


def per_query_scores(correct_ck: torch.Tensor, relevant_c: torch.Tensor,
                     ranks_c: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """PML's per-query values: precision@1, R-precision, AP@R, AP and reciprocal rank (0 when no hit).

    correct_ck: whether each of the k nearest references matches the query's label, nearest first.
    relevant_c: R, the number of references sharing the query's label (itself excluded).
    ranks_c: exact rank of the first positive (k=None), or None to read it off the k neighbours.
    """
    num_k = correct_ck.shape[1]
    columns_k = torch.arange(1, num_k + 1, device=correct_ck.device)
    within_r_ck = columns_k.unsqueeze(0) <= relevant_c.unsqueeze(1)
    hits_ck = correct_ck & within_r_ck
    r_precision = hits_ck.sum(1).double() / within_r_ck.sum(1)
    precision_ck = hits_ck.cumsum(1).double() / columns_k
    ap_at_r = (precision_ck * hits_ck).sum(1) / relevant_c
    average_precision = (correct_ck.cumsum(1).double() / columns_k * correct_ck).sum(1) / relevant_c
    if ranks_c is None:
        first_c = correct_ck.int().argmax(1) + 1
        ranks_c = torch.where(correct_ck.any(1), first_c, torch.zeros_like(first_c))
    reciprocal = torch.where(ranks_c > 0, 1.0 / ranks_c.clamp(min=1).double(), torch.zeros_like(ranks_c).double())
    return {"precision_at_1": correct_ck[:, 0].double(), "r_precision": r_precision,
            "mean_average_precision_at_r": ap_at_r, "mean_average_precision": average_precision,
            "mean_reciprocal_rank": reciprocal}


def average(values_n: torch.Tensor, labels_n: torch.Tensor, avg_of_avgs: bool,
            return_per_class: bool = False) -> float | list[float]:
    """The mean; with avg_of_avgs the mean of the per-class means; with return_per_class those means, in
    the order of torch.unique(labels, dim=0) (PML's)."""
    if not (avg_of_avgs or return_per_class):
        return values_n.mean().item()
    _, class_n = torch.unique(labels_n, dim=0, return_inverse=True)
    sums = torch.zeros(int(class_n.max()) + 1, dtype=torch.float64).index_add_(0, class_n, values_n.double())
    per_class = sums / torch.bincount(class_n)
    return per_class.tolist() if return_per_class else per_class.mean().item()


def cluster_labels(features_ND: torch.Tensor, num_clusters: int, *, seed: int = 0) -> torch.Tensor:
    """k-means cluster of every row: faiss (20 iterations, as PML) when installed, else scikit-learn."""
    data = features_ND.detach().float().cpu().numpy()
    try:
        import faiss
    except ImportError:
        from sklearn.cluster import KMeans

        return torch.from_numpy(KMeans(num_clusters, n_init=1, random_state=seed).fit_predict(data)).long()
    kmeans = faiss.Kmeans(data.shape[1], num_clusters, niter=20, seed=seed)
    kmeans.train(data)
    return torch.from_numpy(kmeans.index.search(data, 1)[1][:, 0]).long()


def metric_accuracy(query_ND: torch.Tensor, query_labels_N: torch.Tensor, reference_MD: torch.Tensor | None = None,
                    reference_labels_M: torch.Tensor | None = None, *, ref_includes_query: bool = False,
                    include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), k: int | str | None = None,
                    distance: str = "euclidean", avg_of_avgs: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    backend: str = "auto", kmeans_seed: int = 0,
                    return_per_class: bool = False) -> dict[str, float | list[float]]:
    """PML's AccuracyCalculator(include, exclude, avg_of_avgs, k).get_accuracy(...), chunked.

    reference None: the queries are their own references and each query skips itself (PML's
    ref_includes_query). k: None (full ranking), "max_bin_count" or an int, as in PML. distance:
    "euclidean" is PML's default (faiss IndexFlatL2 on the raw embeddings); "cosine" normalises
    first; "dot" is the raw inner product. Queries whose label has no other reference get no
    kNN score (NaN when none is left). Returns {metric name: float}; with return_per_class the kNN
    metrics are lists of per-class means (sorted class order; NaN for each query class when none is left).
    """
    metrics = _chosen_metrics(include, exclude)
    check_features("query", query_ND)
    check_integer_labels("query_labels", query_labels_N, len(query_ND))
    check_distance("metric_accuracy", distance)
    check_positive_int("metric_accuracy", "chunk_size", chunk_size)
    if reference_MD is None:
        if reference_labels_M is not None:
            raise ValueError("metric_accuracy: reference_labels was given without reference")
        reference_MD, reference_labels_M, ref_includes_query = query_ND, query_labels_N, True
    check_features("reference", reference_MD)
    check_integer_labels("reference_labels", reference_labels_M, len(reference_MD))
    if reference_MD.shape[1] != query_ND.shape[1]:
        raise ValueError(f"query has dimension {query_ND.shape[1]} but reference has {reference_MD.shape[1]}")
    num_query = len(query_ND)
    if ref_includes_query and not (len(reference_MD) >= num_query and torch.equal(reference_MD[:num_query], query_ND)
                                   and torch.equal(reference_labels_M[:num_query], query_labels_N)):
        raise ValueError("metric_accuracy: ref_includes_query=True needs the first len(query) reference rows and "
                         "labels to equal the queries and their labels")
    check_positive_int("metric_accuracy", "k", k, alternatives=(None, "max_bin_count"))
    if k is not None and k != "max_bin_count":
        check_k("metric_accuracy", k, len(reference_MD) - int(ref_includes_query))
    results = {}
    if any(m in KNN_METRICS for m in metrics):
        results.update(_knn_metrics(query_ND, query_labels_N, reference_MD, reference_labels_M, metrics,
                                    ref_includes_query=ref_includes_query, k=k, distance=distance,
                                    avg_of_avgs=avg_of_avgs, chunk_size=chunk_size, backend=backend,
                                    return_per_class=return_per_class))
    if any(m in CLUSTER_METRICS for m in metrics):
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        truth = query_labels_N.cpu().numpy()
        clusters = cluster_labels(query_ND, len(torch.unique(query_labels_N)), seed=kmeans_seed).numpy()
        scorers = {"NMI": normalized_mutual_info_score, "AMI": adjusted_mutual_info_score}
        results.update({m: float(scorers[m](truth, clusters)) for m in CLUSTER_METRICS if m in metrics})
    return {m: results[m] for m in metrics}


def _knn_metrics(query_ND, query_labels_N, reference_MD, reference_labels_M, metrics, *, ref_includes_query, k,
                 distance, avg_of_avgs, chunk_size, backend, return_per_class) -> dict[str, float | list[float]]:
    device = query_ND.device
    query_labels_N, reference_labels_M = query_labels_N.to(device), reference_labels_M.to(device)
    ref_values, ref_counts = torch.unique(reference_labels_M, return_counts=True)
    position_N = torch.searchsorted(ref_values, query_labels_N).clamp(max=len(ref_values) - 1)
    count_N = torch.where(ref_values[position_N] == query_labels_N, ref_counts[position_N], 0)
    max_bin_count = int(count_N.max())
    relevant_N = count_N - int(ref_includes_query)
    has_relevant_N = relevant_N > 0
    if not bool(has_relevant_N.any()):
        warnings.warn("metric_accuracy: none of the query labels has another reference with that label")
        nan = [float("nan")] * len(torch.unique(query_labels_N)) if return_per_class else float("nan")
        return {m: nan for m in metrics if m in KNN_METRICS}
    num_k = max_bin_count - int(ref_includes_query) if k in (None, "max_bin_count") else k
    if k is None and "mean_average_precision" in metrics:  # MAP over the full ranking: every reference
        num_k = len(reference_MD) - int(ref_includes_query)
    exact_ranks = k is None and "mean_reciprocal_rank" in metrics and num_k < len(reference_MD) - int(ref_includes_query)
    if isinstance(k, int) and k < max_bin_count and {"r_precision", "mean_average_precision_at_r"} & set(metrics):
        warnings.warn(f"metric_accuracy: k={k} is less than the max bin count {max_bin_count}, so r_precision and "
                      "mean_average_precision_at_r are truncated (as in PML); use k='max_bin_count' or None")
    knn_indices_Nk = None
    if resolve_backend("metric_accuracy", backend) == "faiss":
        knn_indices_Nk = chunked_topk(query_ND, reference_MD, num_k, distance=distance,
                                      exclude_self=ref_includes_query, backend="faiss")[1]
    per_query = {m: [] for m in KNN_METRICS}
    if knn_indices_Nk is not None and not exact_ranks:  # faiss found the neighbours: no scores needed
        chunks = ((start, None) for start in range(0, len(query_ND), chunk_size))
    else:
        chunks = score_chunks(query_ND, reference_MD, distance=distance, chunk_size=chunk_size,
                              exclude_self=ref_includes_query)
    for start, scores_cM in chunks:
        end = min(start + chunk_size, len(query_ND))
        labels_c = query_labels_N[start:end]
        if knn_indices_Nk is None:
            indices_ck = ordered_topk(scores_cM, num_k)[1]
        else:
            indices_ck = knn_indices_Nk[start:end]
        ranks_c = None
        if exact_ranks:
            positive_cM = reference_labels_M.unsqueeze(0) == labels_c.unsqueeze(1)
            ranks_c = first_positive_rank(scores_cM, positive_cM & torch.isfinite(scores_cM))
        correct_ck = reference_labels_M[indices_ck] == labels_c.unsqueeze(1)
        values = per_query_scores(correct_ck, relevant_N[start:end], ranks_c)
        for m in KNN_METRICS:
            per_query[m].append(values[m])
    keep_labels = query_labels_N[has_relevant_N].cpu()
    return {m: average(torch.cat(per_query[m])[has_relevant_N].cpu(), keep_labels, avg_of_avgs, return_per_class)
            for m in KNN_METRICS if m in metrics}

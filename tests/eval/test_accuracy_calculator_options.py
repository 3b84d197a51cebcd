"""AccuracyCalculator's return_per_class, label_comparison_fn and knn_func equal PML's (same keys, order,
per-class lists), with dmlscale's and PML's CustomKNN, multi-column labels compared by a custom function,
lone query labels, and every reference layout."""

import warnings

import pytest
import torch

from dmlscale.distances import CosineSimilarity, LpDistance
from dmlscale.eval import AccuracyCalculator, CustomKNN

accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

KNN = ("mean_average_precision", "mean_average_precision_at_r", "mean_reciprocal_rank", "precision_at_1",
       "r_precision")


def clustered(seed, num, num_classes, dim=6, label_columns=1):
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    data = centers[labels] + torch.randn(num, dim, generator=gen)
    if label_columns == 2:  # a second column (a "domain") that the custom comparison ignores
        labels = torch.stack([labels, torch.randint(0, 3, (num,), generator=gen)], dim=1)
    return data, labels


DATA, LABELS = clustered(0, 110, 5)
QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS = DATA[:60], LABELS[:60], DATA[60:], LABELS[60:]
LAYOUTS = {"self": lambda q, ql, r, rl: ((q, ql), {}),
           "separate": lambda q, ql, r, rl: ((q, ql, r, rl), {}),
           "ref_includes_query": lambda q, ql, r, rl: ((q, ql, torch.cat([q, r]), torch.cat([ql, rl])),
                                                       {"ref_includes_query": True})}


def knn_pair(kind: str, batch_size=None):
    if kind == "cosine":
        return CustomKNN(CosineSimilarity(), batch_size), pml_inference.CustomKNN(pml_distances.CosineSimilarity(),
                                                                                 batch_size)
    return (CustomKNN(LpDistance(normalize_embeddings=False), batch_size),
            pml_inference.CustomKNN(pml_distances.LpDistance(normalize_embeddings=False), batch_size))


def accuracies(kwargs, ours_kwargs, pml_kwargs, args, call_kwargs):
    ours = AccuracyCalculator(**kwargs, **ours_kwargs)
    pml = accuracy_calculator.AccuracyCalculator(device=torch.device("cpu"), **kwargs, **pml_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours.get_accuracy(*args, **call_kwargs), pml.get_accuracy(*args, **call_kwargs)


def assert_same(ours, pml):
    assert list(ours) == list(pml)
    for key in pml:
        if isinstance(pml[key], list):
            assert isinstance(ours[key], list) and len(ours[key]) == len(pml[key]), key
            assert ours[key] == pytest.approx(pml[key], abs=1e-6, nan_ok=True), key
        else:
            assert ours[key] == pytest.approx(float(pml[key]), abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("k", [None, "max_bin_count", 4])
@pytest.mark.parametrize("knn", ["euclidean", "cosine"])
def test_return_per_class_with_our_custom_knn_equals_pml(layout, k, knn):
    ours_knn, pml_knn = knn_pair(knn)
    args, call_kwargs = LAYOUTS[layout](QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS)
    ours, pml = accuracies(dict(include=KNN, k=k, return_per_class=True), dict(knn_func=ours_knn),
                           dict(knn_func=pml_knn), args, call_kwargs)
    assert_same(ours, pml)
    assert len(ours["precision_at_1"]) == len(torch.unique(QUERY_LABELS))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_return_per_class_on_the_chunked_path_equals_pml(layout):
    """Without knn_func: dmlscale's chunked search, per-class lists as PML's (with PML's CustomKNN)."""
    args, call_kwargs = LAYOUTS[layout](QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS)
    ours, pml = accuracies(dict(include=KNN, return_per_class=True), dict(distance="euclidean", chunk_size=16),
                           dict(knn_func=knn_pair("euclidean")[1]), args, call_kwargs)
    assert_same(ours, pml)


def first_column_equal(a, b):
    """Labels are (class, domain) rows; two samples match when their classes do."""
    return a[..., 0] == b[..., 0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("return_per_class, avg_of_avgs", [(False, False), (True, False), (False, True)])
def test_custom_label_comparison_on_two_column_labels_equals_pml(layout, return_per_class, avg_of_avgs):
    data, labels = clustered(2, 85, 4, label_columns=2)
    query, query_labels, reference, reference_labels = data[:40], labels[:40], data[40:], labels[40:]
    args, call_kwargs = LAYOUTS[layout](query, query_labels, reference, reference_labels)
    kwargs = dict(include=KNN, k="max_bin_count", return_per_class=return_per_class, avg_of_avgs=avg_of_avgs,
                  label_comparison_fn=first_column_equal)
    ours_knn, pml_knn = knn_pair("euclidean")
    ours, pml = accuracies(kwargs, dict(knn_func=ours_knn), dict(knn_func=pml_knn), args, call_kwargs)
    assert_same(ours, pml)
    if not return_per_class:  # the comparison matters: equality of whole rows (class and domain) is rarer
        plain = AccuracyCalculator(include=("precision_at_1",), knn_func=knn_pair("euclidean")[0],
                                   label_comparison_fn=lambda a, b: (a == b).all(-1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert plain.get_accuracy(*args, **call_kwargs)["precision_at_1"] < ours["precision_at_1"] - 0.1


def test_custom_comparison_with_our_default_search_and_lone_labels():
    """No knn_func: the default (chunked, exact) search feeds PML's path; query class 9 has no reference."""
    query_labels = QUERY_LABELS.clone()
    query_labels[:5] = 9
    args = (QUERY, query_labels, REFERENCE, REFERENCE_LABELS)
    kwargs = dict(include=KNN, return_per_class=True, label_comparison_fn=lambda a, b: a == b)
    ours, pml = accuracies(kwargs, dict(distance="euclidean"), dict(knn_func=knn_pair("euclidean")[1]), args, {})
    assert_same(ours, pml)
    assert len(ours["r_precision"]) == len(torch.unique(query_labels)) - 1  # the lone class is left out


def test_no_reference_holds_a_query_label_gives_nan_per_class_as_pml():
    ours, pml = accuracies(dict(include=("precision_at_1",), return_per_class=True),
                           dict(knn_func=knn_pair("euclidean")[0]), dict(knn_func=knn_pair("euclidean")[1]),
                           (QUERY, QUERY_LABELS + 100, REFERENCE, REFERENCE_LABELS), {})
    assert len(ours["precision_at_1"]) == len(pml["precision_at_1"]) == len(torch.unique(QUERY_LABELS))
    assert all(v != v for v in ours["precision_at_1"])


def test_clustering_metrics_stay_numbers_with_return_per_class():
    calculator = AccuracyCalculator(include=("NMI", "precision_at_1"), return_per_class=True,
                                    kmeans_func=lambda x, n: torch.arange(len(x)) % n)
    result = calculator.get_accuracy(QUERY, QUERY_LABELS)
    assert isinstance(result["NMI"], float) and isinstance(result["precision_at_1"], list)

"""AccuracyCalculator (the class) equals PML's: keys, order and values, with and without reference."""

import warnings

import numpy as np
import pytest
import torch

from dmlscale.eval import AccuracyCalculator

accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

KNN = ("mean_average_precision", "mean_average_precision_at_r", "precision_at_1", "r_precision")  # PML's requires_knn
PML_KNN = {"euclidean": lambda: pml_inference.CustomKNN(pml_distances.LpDistance(normalize_embeddings=False)),
           "cosine": lambda: pml_inference.CustomKNN(pml_distances.CosineSimilarity())}


def clustered(seed, num, num_classes, dim=8):
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    return centers[labels] + torch.randn(num, dim, generator=gen), labels


def both(distance="euclidean", **kwargs):
    ours = AccuracyCalculator(distance=distance, **kwargs)
    pml = accuracy_calculator.AccuracyCalculator(device=torch.device("cpu"), knn_func=PML_KNN[distance](), **kwargs)
    return ours, pml


def assert_same(ours, pml):
    assert list(ours) == list(pml)
    for key in pml:
        assert ours[key] == pytest.approx(float(pml[key]), abs=1e-6, nan_ok=True), key


QUERY, QUERY_LABELS = clustered(0, 120, 5)
REFERENCE, REFERENCE_LABELS = clustered(1, 90, 6)
LAYOUTS = {"self": lambda: ((QUERY, QUERY_LABELS), {}),
           "separate": lambda: ((QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS), {}),
           "ref_includes_query": lambda: ((QUERY, QUERY_LABELS, torch.cat([QUERY, REFERENCE]),
                                           torch.cat([QUERY_LABELS, REFERENCE_LABELS])), {"ref_includes_query": True})}


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [None, "max_bin_count", 5])
@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_get_accuracy_equals_pml(layout, avg_of_avgs, k, distance):
    ours, pml = both(distance, include=KNN + ("mean_reciprocal_rank",), k=k, avg_of_avgs=avg_of_avgs)
    args, kwargs = LAYOUTS[layout]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(ours.get_accuracy(*args, **kwargs), pml.get_accuracy(*args, **kwargs))
    assert ours.get_curr_metrics() == pml.get_curr_metrics()


@pytest.mark.parametrize("constructor, call", [
    (dict(exclude=("NMI", "AMI")), dict()),
    (dict(exclude=("NMI", "AMI")), dict(include=("precision_at_1", "r_precision"))),
    (dict(include=("precision_at_1", "mean_average_precision_at_r")), dict(exclude=("precision_at_1",))),
    (dict(include=("precision_at_1",)), dict(include=("r_precision",))),  # nothing left: {} in both
    (dict(exclude=("NMI", "AMI", "r_precision")), dict(exclude=("mean_average_precision",))),
])
def test_include_exclude_narrow_as_in_pml(constructor, call):
    ours, pml = both(**constructor)
    assert ours.get_curr_metrics() == pml.get_curr_metrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(ours.get_accuracy(QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS, **call),
                    pml.get_accuracy(QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS, **call))
    assert ours.get_curr_metrics() == pml.get_curr_metrics()
    assert ours.requires_clustering() == pml.requires_clustering()
    assert set(ours.requires_knn()) == set(pml.requires_knn()) | {"mean_reciprocal_rank"}


def test_kmeans_func_and_numpy_float_labels_as_in_pml():
    from sklearn.cluster import KMeans

    def sklearn_kmeans(features, num_clusters):
        return torch.from_numpy(KMeans(num_clusters, n_init=1, random_state=0).fit_predict(features.numpy()))

    ours, pml = both(kmeans_func=sklearn_kmeans)
    query, labels = QUERY.numpy(), QUERY_LABELS.numpy().astype(np.float32)  # PML casts labels to float
    assert_same(ours.get_accuracy(query, labels), pml.get_accuracy(query, labels))
    assert 0.0 < ours.get_accuracy(query, labels, include=("AMI",))["AMI"] < 1.0


def test_mean_reciprocal_rank_alone_works_where_pml_raises():
    ours, pml = both(include=("mean_reciprocal_rank",))
    with pytest.raises(TypeError):
        pml.get_accuracy(QUERY, QUERY_LABELS)
    _, full = both(include=("mean_reciprocal_rank", "precision_at_1"))
    expected = full.get_accuracy(QUERY, QUERY_LABELS)["mean_reciprocal_rank"]
    assert ours.get_accuracy(QUERY, QUERY_LABELS) == pytest.approx({"mean_reciprocal_rank": expected}, abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(return_per_class=True, avg_of_avgs=True), "mutually exclusive"),
    (dict(label_comparison_fn=3), "label_comparison_fn must be None or callable"),
    (dict(knn_func="faiss"), "knn_func must be None or callable, got 'faiss'"),
    (dict(label_comparison_fn=lambda a, b: a == b), "cannot be combined with the clustering metrics"),
    (dict(kmeans_func=3), "kmeans_func must be callable"),
    (dict(k=0), "k must be an integer greater than 0.*got 0"),
    (dict(k="all"), "got 'all'"),
    (dict(include=("precision_at_2",)), "include must be a tuple of names.*precision_at_2"),
    (dict(exclude="NMI"), "exclude must be a tuple"),
    (dict(distance="manhattan"), "manhattan"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AccuracyCalculator(**kwargs)


def test_bad_call_arguments_are_named():
    calculator = AccuracyCalculator(include=("precision_at_1",))
    with pytest.raises(ValueError, match="get_accuracy: include must be a tuple of names.*recall"):
        calculator.get_accuracy(QUERY, QUERY_LABELS, include=("recall",))
    with pytest.raises(ValueError, match="whole numbers"):
        calculator.get_accuracy(QUERY, QUERY_LABELS.float() + 0.5)
    with pytest.raises(ValueError, match="ref_includes_query=True"):
        calculator.get_accuracy(QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS, ref_includes_query=True)

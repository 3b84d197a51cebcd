"""metric_accuracy: a hand-worked example, and equality with PML's AccuracyCalculator."""

import warnings

import pytest
import torch

from dmlscale.eval import metric_accuracy
from dmlscale.eval.topk import faiss_available

accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

KNN = ("mean_average_precision", "mean_average_precision_at_r", "mean_reciprocal_rank", "precision_at_1",
       "r_precision")


def test_hand_worked_line():
    """Points 0, 1, 1.5, 3, 4, 10 on a line with labels A A B A B B; each is its own query and is
    skipped as a reference (R = 2). Neighbour labels, nearest first, worked out on paper:
    0: A B A B B, 1: B A A B B, 1.5: A A A B B, 3: B B A A B, 4: A B A A B, 10: B A B A A."""
    emb = torch.tensor([[0.0, 0], [1, 0], [1.5, 0], [3, 0], [4, 0], [10, 0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    for chunk_size in (1, 4, 6):
        full = metric_accuracy(emb, labels, include=KNN, chunk_size=chunk_size)
        assert full["precision_at_1"] == pytest.approx(2 / 6)
        assert full["r_precision"] == pytest.approx(2 / 6)
        assert full["mean_average_precision_at_r"] == pytest.approx(1.5 / 6)
        assert full["mean_reciprocal_rank"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 3 + 1 / 2 + 1) / 6)
        assert full["mean_average_precision"] == pytest.approx(413 / 720)
        no_map = metric_accuracy(emb, labels, include=("mean_reciprocal_rank",), chunk_size=chunk_size)
        assert no_map["mean_reciprocal_rank"] == pytest.approx(43 / 72)  # exact ranks, no full sort
        top2 = metric_accuracy(emb, labels, include=("mean_reciprocal_rank",), k="max_bin_count")
        assert top2["mean_reciprocal_rank"] == pytest.approx(3 / 6)  # no positive in the first 2 -> 0


def clustered(seed, num, num_classes, dim=12):
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    return centers[labels] + torch.randn(num, dim, generator=gen), labels


PML_DISTANCES = {"euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False),
                 "cosine": lambda: pml_distances.CosineSimilarity(),
                 "dot": lambda: pml_distances.DotProductSimilarity(normalize_embeddings=False)}


def pml_accuracy(distance, k, include, avg_of_avgs, *args, **kwargs):
    calculator = accuracy_calculator.AccuracyCalculator(
        include=include, k=k, avg_of_avgs=avg_of_avgs, device=torch.device("cpu"),
        knn_func=pml_inference.CustomKNN(PML_DISTANCES[distance]()))
    return calculator.get_accuracy(*args, **kwargs)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "dot"])
@pytest.mark.parametrize("k", [None, "max_bin_count", 4, 100])
@pytest.mark.parametrize("setting", ["self", "separate", "ref_includes_query"])
def test_equals_pml_accuracy_calculator(distance, k, setting):
    query, query_labels = clustered(0, 180, 6)
    reference, reference_labels = clustered(1, 140, 7)  # label 6 is never a query label
    query_labels = torch.where(query_labels == 5, 8, query_labels)  # label 8 has no reference: lone queries
    args = {"self": (query, query_labels),
            "separate": (query, query_labels, reference, reference_labels),
            "ref_includes_query": (query, query_labels, torch.cat([query, reference]),
                                   torch.cat([query_labels, reference_labels]))}[setting]
    ref_includes_query = setting == "ref_includes_query"
    for include, avg_of_avgs in ((KNN, False), (KNN[1:], True)):  # KNN[1:]: k=None MRR from exact ranks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = pml_accuracy(distance, k, include, avg_of_avgs, *args, ref_includes_query=ref_includes_query)
            ours = metric_accuracy(*args, ref_includes_query=ref_includes_query, include=include, k=k,
                                   distance=distance, avg_of_avgs=avg_of_avgs, chunk_size=23, backend="torch")
        assert set(ours) == set(expected)
        for name, value in expected.items():  # PML works in float32 (its MRR too)
            assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_nmi_ami_equal_pml_with_the_same_kmeans():
    if faiss_available():
        pytest.skip("faiss is installed: metric_accuracy clusters with faiss, not scikit-learn")
    from sklearn.cluster import KMeans

    def sklearn_kmeans(features, num_clusters):  # the documented fallback, written out independently
        return torch.from_numpy(KMeans(num_clusters, n_init=1, random_state=0).fit_predict(features.numpy()))

    query, labels = clustered(2, 200, 5, dim=6)
    calculator = accuracy_calculator.AccuracyCalculator(
        include=("NMI", "AMI"), kmeans_func=sklearn_kmeans, device=torch.device("cpu"),
        knn_func=pml_inference.CustomKNN(pml_distances.LpDistance()))  # unused; PML's default needs faiss
    expected = calculator.get_accuracy(query, labels)
    ours = metric_accuracy(query, labels, include=("NMI", "AMI"), kmeans_seed=0)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.0 < ours["AMI"] < 1.0


def test_nmi_ami_are_one_for_separated_clusters():
    labels = torch.arange(60) % 4
    emb = 100.0 * torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(60, 4)
    assert metric_accuracy(emb, labels, include=("NMI", "AMI")) == pytest.approx({"NMI": 1.0, "AMI": 1.0})


def test_no_query_has_a_relevant_reference_gives_nan():
    emb, labels = torch.randn(5, 3), torch.arange(5)
    with pytest.warns(UserWarning, match="none of the query labels"):
        result = metric_accuracy(emb, labels, include=("precision_at_1", "r_precision"))
    assert all(value != value for value in result.values())


def test_bad_inputs_name_the_value():
    emb, labels = torch.randn(6, 3), torch.arange(6) % 2
    with pytest.raises(ValueError, match="k must be None or 'max_bin_count' or a positive int, got 0"):
        metric_accuracy(emb, labels, k=0)
    with pytest.raises(ValueError, match="got 'all'"):
        metric_accuracy(emb, labels, k="all")
    with pytest.raises(ValueError, match="k=6 is larger than the 5 reference rows"):
        metric_accuracy(emb, labels, k=6)
    with pytest.raises(ValueError, match=r"1-D tensor of shape \(batch_size,\), got \(6, 1\)"):
        metric_accuracy(emb, labels[:, None])
    with pytest.raises(ValueError, match="query_labels has 5 entries but there are 6"):
        metric_accuracy(emb, labels[:5])
    with pytest.raises(ValueError, match="reference_labels has 2 entries but there are 4"):
        metric_accuracy(emb, labels, torch.randn(4, 3), labels[:2])
    with pytest.raises(ValueError, match="dimension 3 but reference has 2"):
        metric_accuracy(emb, labels, torch.randn(4, 2), labels[:4])
    with pytest.raises(ValueError, match="'precision_at_5'"):
        metric_accuracy(emb, labels, include=("precision_at_5",))
    with pytest.raises(ValueError, match="integer tensor, got dtype torch.float32"):
        metric_accuracy(emb, labels.float())
    with pytest.raises(ValueError, match="ref_includes_query=True"):
        metric_accuracy(emb, labels, torch.randn(8, 3), torch.arange(8) % 2, ref_includes_query=True)
    with pytest.raises(ValueError, match="'hamming'"):
        metric_accuracy(emb, labels, distance="hamming")

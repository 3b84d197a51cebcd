"""CustomKNN equals PML's CustomKNN (distances and indices, ties and self-exclusion included, streamed or not);
FaissKNN / FaissKMeans name faiss when it is missing."""

import importlib.util

import pytest
import torch

from dmlscale.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from dmlscale.eval import CustomKNN, FaissKMeans, FaissKNN
from dmlscale.eval.knn import drop_self_matches

pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

HAS_FAISS = importlib.util.find_spec("faiss") is not None
DISTANCES = {
    "l2": (lambda: LpDistance(), lambda: pml_distances.LpDistance()),
    "l2-raw": (lambda: LpDistance(normalize_embeddings=False), lambda: pml_distances.LpDistance(normalize_embeddings=False)),
    "cosine": (lambda: CosineSimilarity(), lambda: pml_distances.CosineSimilarity()),
    "dot": (lambda: DotProductSimilarity(normalize_embeddings=False),
            lambda: pml_distances.DotProductSimilarity(normalize_embeddings=False)),
}


def tied_data(seed: int, dtype=torch.float64):
    """Small integer coordinates, so many distances tie exactly; the reference starts with the queries."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randint(-2, 3, (14, 3), generator=gen).to(dtype)
    query[query.abs().sum(1) == 0] = 1  # no zero rows (normalisation)
    extra = torch.randint(-2, 3, (9, 3), generator=gen).to(dtype)
    extra[extra.abs().sum(1) == 0] = 1
    return query, torch.cat([query, extra])


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("batch_size", [None, 4])
@pytest.mark.parametrize("ref_includes_query", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_pml_with_ties(distance, batch_size, ref_includes_query, dtype):
    query, reference = tied_data(0, dtype)
    ours = CustomKNN(DISTANCES[distance][0](), batch_size=batch_size)
    pml = pml_inference.CustomKNN(DISTANCES[distance][1](), batch_size=batch_size)
    for k in (1, 5, len(reference) - int(ref_includes_query)):
        got_d, got_i = ours(query, k, reference, ref_includes_query)
        want_d, want_i = pml(query, k, reference, ref_includes_query)
        assert got_i.shape == (len(query), k) and torch.equal(got_i, want_i), (k, got_i, want_i)
        assert got_d.dtype == want_d.dtype and torch.equal(got_d, want_d)
        if ref_includes_query:
            assert not bool((got_i == torch.arange(len(query))[:, None]).any()), "a query is its own neighbour"


def test_self_exclusion_when_self_is_not_among_the_k_plus_1():
    """Three copies of every query at distance 0: with k=1 the row's own index may fall out of the 2 found;
    then the last column is dropped, as PML does."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    reference = torch.cat([query, query, query])
    got = CustomKNN(LpDistance())(query, 1, reference, True)
    want = pml_inference.CustomKNN(pml_distances.LpDistance())(query, 1, reference, True)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    distances, indices = drop_self_matches(torch.tensor([[0.0, 0.5]]), torch.tensor([[3, 4]]), True)
    assert indices.tolist() == [[3]] and distances.tolist() == [[0.0]]


def test_index_of_references_and_bad_k():
    query, reference = tied_data(1)
    knn = CustomKNN(CosineSimilarity())
    knn.train(reference[:10])
    knn.add(reference[10:])
    assert torch.equal(knn(query, 3)[1], knn(query, 3, reference)[1])
    knn.reset()
    assert torch.equal(knn(query, 3)[1], pml_inference.CustomKNN(pml_distances.CosineSimilarity())(query, 3, query)[1])
    with pytest.raises(ValueError, match="k must be an int in \\[1, 22\\].*got 23"):
        knn(query, 23, reference, True)
    with pytest.raises(ValueError, match="distance must be a dmlscale distance"):
        CustomKNN("cosine")


@pytest.mark.skipif(HAS_FAISS, reason="faiss is installed: the missing-faiss error cannot happen")
@pytest.mark.parametrize("cls", [FaissKNN, FaissKMeans])
def test_faiss_helpers_name_faiss_when_it_is_missing(cls):
    with pytest.raises(ImportError, match=f"{cls.__name__} needs faiss"):
        cls()


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
def test_faiss_knn_and_kmeans_equal_pml():
    query, reference = tied_data(2, torch.float32)
    query = query + 0.01 * torch.randn(query.shape, generator=torch.Generator().manual_seed(0))
    for ref_includes_query in (False, True):
        got = FaissKNN()(query, 4, torch.cat([query, reference]), ref_includes_query)
        want = pml_inference.FaissKNN()(query, 4, torch.cat([query, reference]), ref_includes_query)
        assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])
    got = FaissKMeans(niter=5, seed=1)(query, 3)
    want = pml_inference.FaissKMeans(niter=5, seed=1)(query, 3)
    assert torch.equal(got, want)

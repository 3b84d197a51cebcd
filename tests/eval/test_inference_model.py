"""InferenceModel and MatchFinder equal PML's (embeddings, match matrices and tuples, is_match, thresholds);
train_knn / add_to_knn / get_nearest_neighbors with CustomKNN give PML's CustomKNN neighbours of the indexed
references; save / load; the default knn_func names faiss when it is missing."""

import importlib.util

import numpy as np
import pytest
import torch

from dmlscale.distances import CosineSimilarity, LpDistance
from dmlscale.eval import CustomKNN, InferenceModel, MatchFinder

pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

D_IN, D_OUT = 6, 4


def models():
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(D_IN, 8), torch.nn.Dropout(0.5), torch.nn.ReLU())
    return trunk, torch.nn.Linear(8, D_OUT)


def inputs(seed, num):
    return torch.randn(num, D_IN, generator=torch.Generator().manual_seed(seed))


def pair(normalize=True, distance="cosine", threshold=0.5):
    trunk, embedder = models()
    ours_finder = MatchFinder(CosineSimilarity() if distance == "cosine" else LpDistance(), threshold)
    pml_finder = pml_inference.MatchFinder(
        pml_distances.CosineSimilarity() if distance == "cosine" else pml_distances.LpDistance(), threshold)
    ours = InferenceModel(trunk, embedder, ours_finder, normalize, knn_func=CustomKNN(CosineSimilarity()),
                          data_device="cpu")
    pml = pml_inference.InferenceModel(trunk, embedder, pml_finder, normalize,
                                       knn_func=pml_inference.CustomKNN(pml_distances.CosineSimilarity()),
                                       data_device=torch.device("cpu"))
    return ours, pml


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("distance, threshold", [("cosine", 0.5), ("l2", 0.8)])
def test_embeddings_and_matches_equal_pml(normalize, distance, threshold):
    ours, pml = pair(normalize, distance, threshold)
    query, ref = inputs(1, 9), inputs(2, 7)
    assert torch.equal(ours.get_embeddings(query), pml.get_embeddings(query))  # eval mode: dropout is off
    assert torch.equal(ours.get_embeddings(list(query)), pml.get_embeddings(list(query)))
    matches = ours.get_matches(query, ref)
    assert isinstance(matches, np.ndarray) and np.array_equal(matches, pml.get_matches(query, ref))
    assert 0 < matches.sum() < matches.size, "the threshold should split the pairs"
    assert ours.get_matches(query, threshold=0.1, return_tuples=True) == pml.get_matches(
        query, threshold=0.1, return_tuples=True)
    assert np.array_equal(ours.is_match(query[:7], ref), pml.is_match(query[:7], ref))
    assert ours.is_match(query[:1], ref[:1]) == pml.is_match(query[:1], ref[:1])


def test_nearest_neighbours_of_the_indexed_references(tmp_path):
    ours, pml = pair()
    references = inputs(3, 20)
    dataset = torch.utils.data.TensorDataset(references[:12], torch.zeros(12))
    ours.train_knn(dataset, batch_size=5)
    ours.add_to_knn(references[12:], batch_size=3)
    query = inputs(4, 6)
    distances, indices = ours.get_nearest_neighbors(query, k=4)
    want = pml_inference.CustomKNN(pml_distances.CosineSimilarity())(pml.get_embeddings(query), 4,
                                                                       pml.get_embeddings(references))
    assert torch.equal(indices, want[1]) and torch.allclose(distances, want[0], atol=1e-6)
    ours.save_knn_func(str(tmp_path / "index.pt"))
    ours.knn_func.reset()
    ours.load_knn_func(str(tmp_path / "index.pt"))
    assert torch.equal(ours.get_nearest_neighbors(query, k=4)[1], indices)


def test_defaults_and_bad_inputs():
    trunk, _ = models()
    if importlib.util.find_spec("faiss") is None:
        with pytest.raises(ImportError, match="FaissKNN needs faiss"):
            InferenceModel(trunk)
    model = InferenceModel(trunk, knn_func=CustomKNN(CosineSimilarity()), data_device="cpu")
    assert isinstance(model.match_finder.distance, CosineSimilarity) and model.match_finder.threshold == 0.9
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        model.train_knn(inputs(0, 4), batch_size=0)
    with pytest.raises(ValueError, match="inputs must be a tensor.*got str"):
        model.train_knn("images/")
    with pytest.raises(ValueError, match="no threshold"):
        MatchFinder(CosineSimilarity()).is_match(inputs(0, 2), inputs(1, 2))

"""Chunked top-k and first-positive ranks: hand-built ties, brute force, chunk sizes, memory per chunk."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dmlscale.eval import metric_accuracy, retrieval_metrics
from dmlscale.eval.topk import chunked_topk, first_positive_rank, ordered_topk, score_chunks


def brute_force_order(query, reference, distance, exclude_self=False):
    """Full N x M ranking by (score descending, index ascending) from an independent formula."""
    if distance == "cosine":
        query, reference = [torch.nn.functional.normalize(t, dim=1) for t in (query, reference)]
    scores = -torch.cdist(query, reference).pow(2) if distance == "euclidean" else query @ reference.t()
    keys = []
    for row, values in enumerate(scores.tolist()):
        order = sorted(range(len(values)), key=lambda j: (-values[j], j))
        keys.append([j for j in order if not (exclude_self and j == row)])
    return keys


def test_ties_go_to_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    values, indices = ordered_topk(scores, 2)
    assert indices.tolist() == [[1, 2], [0, 1]] and values.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    assert ordered_topk(scores, 4)[1].tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert ordered_topk(scores, 1)[1].tolist() == [[1], [0]]


def test_first_positive_rank_by_hand():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    positive = torch.tensor([[False, False, True, False],   # ahead: 0.9 and the tied 0.5 at index 0 -> rank 3
                             [True, False, True, False],    # best positive is index 0 (tie, lower index) -> 2
                             [False, False, False, False]])  # no positive -> 0
    assert first_positive_rank(scores, positive).tolist() == [3, 2, 0]


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "dot"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_topk_equals_brute_force_for_every_chunk_size(distance, exclude_self):
    gen = torch.Generator().manual_seed(3)

    def signed_axes(num):  # +-1, 2 or 3 times a unit axis: every score is exact, with many exact ties
        scale = torch.randint(1, 4, (num,), generator=gen) * (torch.randint(0, 2, (num,), generator=gen) * 2 - 1)
        return torch.nn.functional.one_hot(torch.randint(0, 3, (num,), generator=gen), 3).double() * scale[:, None]

    reference = signed_axes(23)
    query = reference[:17].clone() if exclude_self else signed_axes(17)
    k = 6
    expected = [row[:k] for row in brute_force_order(query, reference, distance, exclude_self)]
    for chunk_size in (1, 4, 5, 17, 40):
        _, indices = chunked_topk(query, reference, k, distance=distance, chunk_size=chunk_size,
                                  exclude_self=exclude_self, backend="torch")
        assert indices.tolist() == expected, f"chunk_size={chunk_size}"


def test_faiss_backend_agrees_without_ties():
    pytest.importorskip("faiss", reason="faiss is optional and not installed here")
    gen = torch.Generator().manual_seed(0)
    query, reference = torch.randn(30, 8, generator=gen), torch.randn(50, 8, generator=gen)
    for distance in ("euclidean", "cosine", "dot"):
        ours = chunked_topk(query, reference, 5, distance=distance, backend="torch")[1]
        theirs = chunked_topk(query, reference, 5, distance=distance, backend="faiss")[1]
        assert torch.equal(ours, theirs)


def test_score_chunks_respects_chunk_size():
    query, reference = torch.randn(23, 4), torch.randn(11, 4)
    shapes = [tuple(scores.shape) for _, scores in score_chunks(query, reference, chunk_size=5)]
    assert shapes == [(5, 11)] * 4 + [(3, 11)]


def largest_allocation(fn) -> int:
    """Bytes of the largest single CPU allocation any torch operator made while fn ran (torch profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.cpu_memory_usage for event in prof.events())


def test_memory_is_linear_in_n():
    """No allocation reaches the size of one N x M float matrix when chunk_size << N."""
    num = 600
    gen = torch.Generator().manual_seed(0)
    features, labels = torch.randn(num, 8, generator=gen), torch.arange(num) % 6
    full_matrix_bytes = num * num * 4
    chunked = largest_allocation(lambda: metric_accuracy(features, labels, chunk_size=20, backend="torch",
                                                         include=("precision_at_1", "mean_reciprocal_rank")))
    chunked_retrieval = largest_allocation(lambda: retrieval_metrics(features, features.flip(0), chunk_size=20))
    unchunked = largest_allocation(lambda: retrieval_metrics(features, features.flip(0), chunk_size=num))
    assert chunked < full_matrix_bytes / 4 and chunked_retrieval < full_matrix_bytes / 4
    assert unchunked >= full_matrix_bytes  # the probe does see a full matrix when one is built


def test_bad_inputs_name_the_value():
    query = torch.randn(4, 3)
    with pytest.raises(ValueError, match="k=5"):
        chunked_topk(query, torch.randn(5, 3), 5, exclude_self=True)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        chunked_topk(query, query, 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        chunked_topk(query, query, 1, chunk_size=0, backend="torch")
    with pytest.raises(ValueError, match="'manhattan'"):
        chunked_topk(query, query, 1, distance="manhattan")
    with pytest.raises(ValueError, match="dimension 3 but reference has 2"):
        chunked_topk(query, torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        chunked_topk(query, torch.full((4, 3), float("nan")), 1)
    with pytest.raises(ValueError, match="'annoy'"):
        chunked_topk(query, query, 1, backend="annoy")

"""Distributed evaluation on 2 real gloo processes with unequal local sizes equals one process."""

import pytest
import torch

from dmlscale.eval import metric_accuracy, retrieval_metrics, zero_shot_accuracy
from dmlscale.eval.gather import (distributed_metric_accuracy, distributed_retrieval_metrics,
                                  distributed_zero_shot_accuracy)
from tests.distributed.launch import results, run_world

QUERY_SPLIT, REFERENCE_SPLIT, IMAGE_SPLIT = (13, 34), (29, 8), (4, 9)


def make_data():
    gen = torch.Generator().manual_seed(0)
    centers = 2.0 * torch.randn(5, 6, generator=gen, dtype=torch.float64)
    query_labels = torch.randint(0, 5, (sum(QUERY_SPLIT),), generator=gen)
    reference_labels = torch.randint(0, 5, (sum(REFERENCE_SPLIT),), generator=gen)
    query = centers[query_labels] + torch.randn(len(query_labels), 6, generator=gen, dtype=torch.float64)
    reference = centers[reference_labels] + torch.randn(len(reference_labels), 6, generator=gen, dtype=torch.float64)
    images = torch.randn(sum(IMAGE_SPLIT), 6, generator=gen, dtype=torch.float64)
    captions_per_image = torch.randint(1, 4, (len(images),), generator=gen)
    text_image_index = torch.arange(len(images)).repeat_interleave(captions_per_image)
    texts = images[text_image_index] + torch.randn(len(text_image_index), 6, generator=gen, dtype=torch.float64)
    classifier = torch.nn.functional.normalize(centers.t(), dim=0)
    return dict(query=query, query_labels=query_labels, reference=reference, reference_labels=reference_labels,
                images=images, texts=texts, text_image_index=text_image_index, classifier=classifier)


def split(tensor, sizes, rank):
    start = sum(sizes[:rank])
    return tensor[start:start + sizes[rank]]


def local_texts(data, rank):
    """This rank's captions: those of its own images, indexed into its local images."""
    first = sum(IMAGE_SPLIT[:rank])
    mine = (data["text_image_index"] >= first) & (data["text_image_index"] < first + IMAGE_SPLIT[rank])
    return data["texts"][mine], data["text_image_index"][mine] - first


def _worker(rank, world_size):
    data = make_data()
    query, query_labels = split(data["query"], QUERY_SPLIT, rank), split(data["query_labels"], QUERY_SPLIT, rank)
    reference = split(data["reference"], REFERENCE_SPLIT, rank)
    reference_labels = split(data["reference_labels"], REFERENCE_SPLIT, rank)
    images = split(data["images"], IMAGE_SPLIT, rank)
    texts, index = local_texts(data, rank)
    out = {
        "self": distributed_metric_accuracy(query, query_labels, chunk_size=5, backend="torch"),
        "separate": distributed_metric_accuracy(query, query_labels, reference, reference_labels,
                                                k="max_bin_count", distance="cosine", backend="torch"),
        "retrieval": distributed_retrieval_metrics(images, texts, index, ks=(1, 2, 5), chunk_size=3),
        "zero_shot": distributed_zero_shot_accuracy(query, query_labels, data["classifier"], topk=(1, 2)),
    }
    for name, bad_call in {
        "bad_labels_on_rank1": lambda: distributed_metric_accuracy(
            query, query_labels[:-1] if rank == 1 else query_labels),
        "k_too_large_on_rank0": lambda: distributed_metric_accuracy(query, query_labels, k=1000),
    }.items():
        try:
            bad_call()
            out[name] = "no error"
        except ValueError as error:
            out[name] = str(error)
    return out


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process():
    data = make_data()
    expected = {
        "self": metric_accuracy(data["query"], data["query_labels"], backend="torch"),
        "separate": metric_accuracy(data["query"], data["query_labels"], data["reference"], data["reference_labels"],
                                    k="max_bin_count", distance="cosine", backend="torch"),
        "retrieval": retrieval_metrics(data["images"], data["texts"], data["text_image_index"], ks=(1, 2, 5)),
        "zero_shot": zero_shot_accuracy(data["query"], data["query_labels"], data["classifier"], topk=(1, 2)),
    }
    per_rank = results(run_world(_worker, 2))
    for rank, out in enumerate(per_rank):
        for name, value in expected.items():  # every rank gets rank 0's result
            assert out[name] == pytest.approx(value, abs=1e-12), (rank, name)
        assert "rank 1: query labels has 33 entries but there are 34" in out["bad_labels_on_rank1"]
        assert "k=1000 is larger than the 46 reference rows" in out["k_too_large_on_rank0"]
    assert 0.0 < expected["retrieval"]["image_to_text_R@1"] < 1.0 and 0.0 < expected["self"]["precision_at_1"] < 1.0


def test_without_a_process_group_is_the_single_process_call():
    data = make_data()
    assert distributed_metric_accuracy(data["query"], data["query_labels"], backend="torch") == \
        metric_accuracy(data["query"], data["query_labels"], backend="torch")
    assert distributed_retrieval_metrics(data["images"], data["texts"], data["text_image_index"]) == \
        retrieval_metrics(data["images"], data["texts"], data["text_image_index"])
    with pytest.raises(ValueError, match="rank 0: .*no caption"):
        distributed_retrieval_metrics(data["images"], data["texts"][:1], data["text_image_index"][:1])

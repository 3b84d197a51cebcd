"""TuplesToWeightsSampler: PML's weights for the same model, miner, dataset and seed (subset or whole
dataset), indices drawn as torch's WeightedRandomSampler draws them from those weights with the seeded
generator, only from mined samples, and named errors."""

import numpy as np
import pytest
import torch

from dmlscale import miners
from dmlscale.samplers import TuplesToWeightsSampler

pml_samplers = pytest.importorskip("pytorch_metric_learning.samplers")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

TESTER = dict(batch_size=16, dataloader_num_workers=0, data_device=torch.device("cpu"))


def setting():
    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(60, 5, generator=gen)
    labels_N = torch.randint(0, 4, (60,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Dropout(0.3))  # eval mode: no dropout
    return model, torch.utils.data.TensorDataset(x_ND, labels_N)


def pml_calculator():
    """PML's tester builds a FaissKNN calculator by default, which needs faiss; the sampler never uses it."""
    knn = pml_inference.CustomKNN(pml_distances.LpDistance(normalize_embeddings=False))
    return pml_accuracy.AccuracyCalculator(knn_func=knn, device=torch.device("cpu"))


@pytest.mark.parametrize("subset_size", [None, 25, 80])
def test_weights_and_draws_as_pml(subset_size):
    model, dataset = setting()
    ours = TuplesToWeightsSampler(model, miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"),
                                  dataset, subset_size, seed=4, **TESTER)
    pml = pml_samplers.TuplesToWeightsSampler(model, pml_miners.TripletMarginMiner(margin=0.1,
                                                                                   type_of_triplets="semihard"),
                                              dataset, subset_size, **TESTER, accuracy_calculator=pml_calculator())
    np.random.seed(4)
    pml_drawn = list(pml)
    drawn = list(ours)
    assert torch.equal(ours.weights, pml.weights)
    positive = ours.weights > 0
    assert len(torch.unique(ours.weights[positive])) > 2, "the mined counts should shape the weights"
    if subset_size == 25:
        assert int(positive.sum()) <= 25
    expected = list(torch.utils.data.WeightedRandomSampler(pml.weights, len(pml_drawn), replacement=True,
                                                           generator=torch.Generator().manual_seed(4)))
    assert drawn == expected and len(drawn) == (subset_size or len(dataset))
    assert bool(positive[drawn].all())


def test_nothing_mined_weighs_the_subset_uniformly_and_errors_are_named():
    model, dataset = setting()
    sampler = TuplesToWeightsSampler(model, lambda emb, labels: (torch.tensor([], dtype=torch.long),) * 3, dataset,
                                     20, seed=1, **TESTER)
    drawn = list(sampler)
    assert int((sampler.weights == 1).sum()) == len(set(np.random.RandomState(1).choice(60, 20, replace=False)))
    assert set(drawn) <= set(torch.nonzero(sampler.weights).flatten().tolist())
    with pytest.raises(ValueError, match="tester options \\['pca'\\] are not supported"):
        TuplesToWeightsSampler(model, miners.BatchHardMiner(), dataset, pca=8)
    with pytest.raises(ValueError, match="subset_size must be a positive int, got -3"):
        TuplesToWeightsSampler(model, miners.BatchHardMiner(), dataset, -3)

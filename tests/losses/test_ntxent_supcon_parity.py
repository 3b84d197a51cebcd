"""NTXentLoss and SupConLoss equal PML's in value and gradient (float64, 1e-10), for every distance and
input mode; NTXent's vectorised path never builds the positive x negative tensor."""

import re

import pytest
import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.reducers as pml_reducers
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, compare_losses, make_batch, make_distances, run_mode,
)

LOSSES = {"NTXentLoss": dict(temperature=0.3), "SupConLoss": dict(temperature=0.2)}


def ntxent_batch(seed: int, num_pairs: int = 8, dim: int = 6):
    """Two views per instance: labels 0..n-1, 0..n-1 (the SimCLR layout)."""
    gen = torch.Generator().manual_seed(seed)
    emb_BD = torch.randn(2 * num_pairs, dim, generator=gen, dtype=torch.float64)
    return emb_BD, torch.arange(num_pairs).repeat(2)


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_parity_every_distance_and_mode(name, setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    value = run_mode(mode, getattr(ours, name)(distance=ours_dist, **LOSSES[name]),
                     getattr(pml_losses, name)(distance=pml_dist, **LOSSES[name]), seed=21)
    assert value.abs() > 1e-3, "a vanishing loss would not test anything"


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_default_distance_and_temperature(name, temperature):
    for mode in INPUT_MODES:
        run_mode(mode, getattr(ours, name)(temperature=temperature), getattr(pml_losses, name)(temperature=temperature),
                 seed=4, batch_size=16, num_classes=5)


@pytest.mark.parametrize("setting", [("CosineSimilarity", {}), ("LpDistance", dict(p=2, power=2))],
                         ids=["cosine", "sqeuclidean"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ntxent_label_layout(name, setting):
    ours_dist, pml_dist = make_distances(*setting)
    emb_BD, labels_B = ntxent_batch(seed=9, num_pairs=24)
    value = compare_losses(getattr(ours, name)(distance=ours_dist), getattr(pml_losses, name)(distance=pml_dist),
                           emb_BD, labels_B)
    assert value > 0.1


def test_ntxent_duplicate_and_anchor_without_negatives():
    """Repeated pairs count with multiplicity; an anchor with positives but no negatives adds ~0 losses."""
    emb_BD, labels_B = make_batch(31, batch_size=10, num_classes=2)
    from dmlscale.indices import all_pairs
    a1, p, a2, n = all_pairs(labels_B)
    a2_only = a2[a2 != a1[0]]
    n_only = n[a2 != a1[0]]
    repeat = torch.arange(len(a2_only)) % 3 == 0
    tup = (torch.cat([a1, a1[:4]]), torch.cat([p, p[:4]]),
           torch.cat([a2_only, a2_only[repeat]]), torch.cat([n_only, n_only[repeat]]))
    for cls, kwargs in [(ours.NTXentLoss, {}), (ours.NTXentLoss, dict(temperature=0.5))]:
        value = compare_losses(cls(**kwargs), getattr(pml_losses, cls.__name__)(**kwargs), emb_BD, labels_B,
                               indices_tuple=tup)
        assert value > 0.1


@pytest.mark.parametrize("reducer", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reducers(name, reducer):
    for mode in ("labels", "pairs"):
        run_mode(mode, getattr(ours, name)(reducer=getattr(ours, reducer)()),
                 getattr(pml_losses, name)(reducer=getattr(pml_reducers, reducer)()), seed=13)
    run_mode("labels", getattr(ours, name)(reducer=ours.ThresholdReducer(low=2.0)),
             getattr(pml_losses, name)(reducer=pml_reducers.ThresholdReducer(low=2.0)), seed=14)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nothing_to_compare_gives_connected_zero(name):
    emb_BD = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for labels_B in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        ours_value = getattr(ours, name)()(emb_BD, labels_B)
        pml_value = getattr(pml_losses, name)()(emb_BD, labels_B)
        assert float(ours_value.detach()) == float(pml_value.detach()) == 0.0
        ours_value.backward()


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("bad", [0, -0.5, "0.1", True, float("nan")])
def test_bad_temperature_is_named(name, bad):
    with pytest.raises(ValueError, match="temperature must be a positive number, got " + re.escape(repr(bad))):
        getattr(ours, name)(temperature=bad)


def test_needs_labels_or_tuple():
    with pytest.raises(ValueError, match="labels"):
        ours.NTXentLoss()(torch.randn(4, 3))


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("use_tuple", [False, True], ids=["labels", "pair_tuple"])
def test_ntxent_memory_is_linear_in_matrix_size(use_tuple):
    """No tensor larger than the B x R matrix, forward and backward (PML's would be P x N = B^3-ish)."""
    num_pairs = 48
    emb_BD = torch.randn(2 * num_pairs, 8, requires_grad=True)
    labels_B = torch.arange(num_pairs).repeat(2)
    tup = None
    if use_tuple:
        from dmlscale.indices import all_pairs
        tup = all_pairs(labels_B)
    with LargestTensor() as probe:
        ours.NTXentLoss()(emb_BD, labels_B, indices_tuple=tup).backward()
    batch = 2 * num_pairs
    largest_allowed = max(batch * batch, len(tup[2]) if use_tuple else 0)  # B x R, or the caller's own list
    assert probe.max_numel <= largest_allowed, (probe.max_numel, batch * batch)
    assert probe.max_numel < batch * (batch - 2) * batch // 4  # far below P x N = B * B(B-2)

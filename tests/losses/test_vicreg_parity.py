"""VICRegLoss equals PML's in value and gradient (float64, 1e-10) for two views and for one (ref_emb
absent), with several weights and reducers; labels, tuples, distances are refused like PML, and
DistributedLoss and recipes refuse it (its ref_emb is a second view)."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from dmlscale import components
from dmlscale.distributed import DistributedLoss
from tests.parity import assert_close, value_and_grads

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")


def views(seed: int, rows: int = 10, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, dim, generator=gen, dtype=torch.float64) * 0.7
    return z, z + 0.3 * torch.randn(rows, dim, generator=gen, dtype=torch.float64)


def compare(ours_loss, pml_loss, z, z2=None):
    inputs = [z] if z2 is None else [z, z2]

    def run(loss):
        return lambda *x: loss(x[0], ref_emb=None if z2 is None else x[1])

    got, got_grads = value_and_grads(run(ours_loss), inputs)
    want, want_grads = value_and_grads(run(pml_loss), inputs)
    assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, what="gradient")
    return got


@pytest.mark.parametrize("kwargs", [dict(), dict(invariance_lambda=5, variance_mu=10, covariance_v=3, eps=1e-3)])
@pytest.mark.parametrize("two_views", [True, False])
def test_parity(kwargs, two_views):
    z, z2 = views(151)
    value = compare(ours.VICRegLoss(**kwargs), pml_losses.VICRegLoss(**kwargs), z, z2 if two_views else None)
    assert value > 1e-3


@pytest.mark.parametrize("reducer", ["SumReducer", "AvgNonZeroReducer"])
def test_reducers(reducer):
    z, z2 = views(152)
    compare(ours.VICRegLoss(reducer=getattr(ours, reducer)()),
            pml_losses.VICRegLoss(reducer=getattr(pml_reducers, reducer)()), z, z2)


def test_refusals():
    z, z2 = views(153)
    with pytest.raises(ValueError, match="VICRegLoss takes no distance"):
        ours.VICRegLoss(distance=ours_d.CosineSimilarity())
    with pytest.raises(ValueError, match="takes no labels"):
        ours.VICRegLoss()(z, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no indices_tuple"):
        ours.VICRegLoss()(z, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="two views of the same samples"):
        ours.VICRegLoss()(z, ref_emb=z2[:5])
    with pytest.raises(ValueError, match="cannot wrap VICRegLoss"):
        DistributedLoss(ours.VICRegLoss())
    assert "VICRegLoss" not in components.component_classes("loss")
    assert "ManifoldLoss" not in components.component_classes("loss")

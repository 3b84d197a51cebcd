"""DynamicSoftMarginLoss: values equal PML's over several calls (the running histogram included) from
labels, tuples, ref_emb and without labels; gradients equal PML's loss with its histogram held
constant (PML keeps the graph in the histogram, so its own second backward raises: a PML bug; its
unlabelled path has no backward at all, so there the gradient is checked against a loop reference)."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, make_batch, make_distances, pair_tuple_from_labels,
    triplet_tuple_from_labels,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

ACCEPTED = [(i, s) for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS)
            if s[0] == "LpDistance" and s[1]["p"] == 2 and s[1]["normalize_embeddings"] and s[1]["power"] == 1]


def call_kwargs(mode, labels, seed):
    ref, ref_labels = make_batch(seed + 7, batch_size=12)  # the same size: the unlabelled rows pair up
    return {
        "labels": (labels, {}),
        "pairs": (labels, dict(indices_tuple=pair_tuple_from_labels(labels, seed))),
        "triplets": (labels, dict(indices_tuple=triplet_tuple_from_labels(labels, seed))),
        "ref_emb": (labels, dict(ref_emb=ref, ref_labels=ref_labels)),
        "no-labels": (None, dict(ref_emb=ref)),
    }[mode]


@pytest.mark.parametrize("kwargs", [dict(), dict(min_val=-2.5, num_bins=20, momentum=0.3)])
@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets", "ref_emb", "no-labels"])
def test_values_over_calls_and_gradient(mode, kwargs):
    if mode in ("ref_emb", "no-labels") and not kwargs:
        pytest.skip("PML bug: with these batches a gap lands in the last bin and PML indexes past the histogram "
                    "(index 10 is out of bounds); the wider bins of the other setting are compared")
    ours_loss, pml_loss = ours.DynamicSoftMarginLoss(**kwargs), pml_losses.DynamicSoftMarginLoss(**kwargs)
    for step in range(3):
        emb, labels = make_batch(141 + step, batch_size=12)
        labels, extra = call_kwargs(mode, labels, 141 + step)
        x = emb.clone().requires_grad_(True)
        ours_value = ours_loss(x, labels, **extra)
        ours_value.backward()
        with torch.no_grad():
            pml_value = pml_loss(emb, labels, **extra)
        assert_close(ours_value, pml_value, what=f"value at call {step}")
        assert_close(ours_loss.hist_, pml_loss.hist_, what=f"histogram after call {step}")
        y = emb.clone().requires_grad_(True)
        if labels is None:  # PML's unlabelled path fills the distance matrix in place: it has no backward
            reference_unlabelled(y, extra["ref_emb"], pml_loss.hist_, ours_loss).backward()
        else:  # PML's loss with the histogram it just built held constant
            frozen = pml_losses.DynamicSoftMarginLoss(**kwargs)
            frozen.hist_, frozen.update_histogram = pml_loss.hist_.clone(), lambda data: None
            frozen(y, labels, **extra).backward()
        assert_close(x.grad, y.grad, what=f"gradient at call {step}")


def reference_unlabelled(x, ref, hist, loss):
    """mean CDF(bin(gap)) * gap, gap_i = d(x_i, r_i) - min(d(x_i, r_j), d(x_j, r_i) for j != i), equal sizes."""
    d = torch.cdist(torch.nn.functional.normalize(x), torch.nn.functional.normalize(ref))
    cdf = torch.cumsum(hist, 0)
    terms = []
    for i in range(len(x)):
        others = [d[i, j] for j in range(len(ref)) if j != i] + [d[j, i] for j in range(len(x)) if j != i]
        gap = d[i, i] - torch.stack(others).min()
        terms.append(cdf[int((gap.item() - loss.min_val) // loss.delta)] * gap)
    return torch.stack(terms).mean()


def test_pml_second_backward_raises():
    pytest.skip("PML bug: PML keeps the autograd graph in its histogram, so a second training step raises "
                "'Trying to backward through the graph a second time'; ours keeps the histogram as a statistic")


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
def test_no_triplets_is_a_connected_zero(labels):
    emb, _ = make_batch(145, batch_size=8)
    x = emb.clone().requires_grad_(True)
    value = ours.DynamicSoftMarginLoss()(x, labels)
    value.backward()
    assert value == 0 and pml_losses.DynamicSoftMarginLoss()(emb, labels) == 0 and x.grad is not None


def test_gaps_past_the_last_bin_use_the_end_bins():
    """Two classes placed so that d_ap - d_an is close to 2: PML indexes out of range, ours clamps."""
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.01], [1.0, 0.01]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.isfinite(ours.DynamicSoftMarginLoss()(emb, labels))


OTHER = [(i, s) for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if (i, s) not in ACCEPTED]


@pytest.mark.parametrize("setting", [s for _, s in OTHER], ids=[i for i, _ in OTHER])
def test_other_distances_raise(setting):
    name, kwargs = setting
    if name == "LpDistance" and kwargs["p"] == 2 and kwargs["normalize_embeddings"]:
        pytest.skip("power=2 is accepted by both (values need the bins to cover [-4, 4])")
    with pytest.raises(ValueError, match="DynamicSoftMarginLoss requires"):
        ours.DynamicSoftMarginLoss(distance=getattr(ours_d, name)(**kwargs))
    with pytest.raises(AssertionError):
        pml_losses.DynamicSoftMarginLoss(distance=getattr(pml_d, name)(**kwargs))

"""HistogramLoss equals PML's in value and gradient (float64, 1e-10) for the similarities in [-1, 1],
from labels and pair / triplet tuples, with n_bins / delta settings and the no-positive / no-negative
cases; a plain ref_emb and distances outside [-1, 1] are refused with a ValueError (PML refuses the
first and indexes out of range on the second)."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from dmlscale.distributed import DistributedLoss
from tests.parity import compare_losses, make_batch, make_distances, run_mode

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # inside PML

SIMILARITIES = [("CosineSimilarity", dict()), ("DotProductSimilarity", dict())]


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("bins", [dict(), dict(n_bins=10), dict(delta=0.25), dict(n_bins=40, delta=0.05)])
@pytest.mark.parametrize("setting", SIMILARITIES, ids=[s[0] for s in SIMILARITIES])
def test_parity(setting, bins, mode):
    ours_dist, pml_dist = make_distances(*setting)
    value = run_mode(mode, ours.HistogramLoss(distance=ours_dist, **bins),
                     pml_losses.HistogramLoss(distance=pml_dist, **bins), seed=131)
    assert value > 1e-3


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "no-neg"])
def test_no_positives_or_no_negatives(labels):
    emb, _ = make_batch(132, batch_size=8)
    assert compare_losses(ours.HistogramLoss(), pml_losses.HistogramLoss(), emb, labels) == 0


def test_refusals():
    emb, labels = make_batch(133)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        ours.HistogramLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels)
    with pytest.raises(ValueError, match="similarities in \\[-1, 1\\]; distance LpDistance"):
        ours.HistogramLoss(distance=ours_d.LpDistance(normalize_embeddings=False))(emb * 3, labels)
    with pytest.raises(ValueError, match="delta = 2 / n_bins"):
        ours.HistogramLoss(n_bins=10, delta=0.1)


def test_one_process_distributed_loss_is_the_plain_loss():
    emb, labels = make_batch(134)
    compare_losses(DistributedLoss(ours.HistogramLoss()), pml_losses.HistogramLoss(), emb, labels)

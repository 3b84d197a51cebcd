"""PNPLoss equals PML's in value and gradient (float64, 1e-10) for every variant, from labels, with
no-positive / no-negative cases; PML refuses ref_emb, ours computes it (a block of queries against the
whole batch gives its share, what DistributedLoss does); other distances and tuples are refused."""

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, compare_losses, make_batch, run_mode

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")


@pytest.mark.parametrize("kwargs", [dict(anneal=0.1), dict(anneal=0.5, b=3), dict(anneal=0.05, alpha=2)])
@pytest.mark.parametrize("variant", ["O", "Ds", "Dq", "Iu", "Ib"])
def test_parity(variant, kwargs):
    value = run_mode("labels", ours.PNPLoss(variant=variant, **kwargs),
                     pml_losses.PNPLoss(variant=variant, **kwargs), seed=111)
    assert value > 1e-3


def test_defaults_clamped_exponents():
    """anneal=0.01 saturates many sigmoids: the clamp (and its zero gradient) matches PML."""
    run_mode("labels", ours.PNPLoss(), pml_losses.PNPLoss(), seed=112)


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long),
                                    torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])], ids=["no-pos", "no-neg", "some-singletons"])
def test_no_positives_or_no_negatives(labels):
    emb, _ = make_batch(113, batch_size=8)
    compare_losses(ours.PNPLoss(anneal=0.1), pml_losses.PNPLoss(anneal=0.1), emb, labels)


def test_ref_emb_block_equals_its_share():
    emb, labels = make_batch(114, batch_size=14)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml_losses.PNPLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels)
    whole = ours.PNPLoss(anneal=0.1, reducer=ours.DoNothingReducer())(emb, labels)["loss"]
    in_block = (whole["indices"] >= 3) & (whole["indices"] < 10)
    got = ours.PNPLoss(anneal=0.1, reducer=ours.SumReducer())(
        emb[3:10], labels[3:10], ref_emb=emb, ref_labels=labels, query_ref_index=torch.arange(3, 10))
    assert_close(got, whole["losses"][in_block].sum())


OTHER = [(i, s) for i, s in zip(DISTANCE_IDS, DISTANCE_SETTINGS) if s[0] != "CosineSimilarity"]


@pytest.mark.parametrize("setting", [s for _, s in OTHER], ids=[i for i, _ in OTHER])
def test_other_distances_raise(setting):
    with pytest.raises(ValueError, match=f"PNPLoss requires distance CosineSimilarity, got {setting[0]}"):
        ours.PNPLoss(distance=getattr(ours_d, setting[0])(**setting[1]))
    with pytest.raises(AssertionError):
        pml_losses.PNPLoss(distance=getattr(pml_d, setting[0])(**setting[1]))


def test_refusals():
    emb, labels = make_batch(115)
    with pytest.raises(ValueError, match="variant must be one of .*'X'"):
        ours.PNPLoss(variant="X")
    with pytest.raises(ValueError, match="indices_tuple"):
        ours.PNPLoss()(emb, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="anneal must be a positive number, got 0"):
        ours.PNPLoss(anneal=0)

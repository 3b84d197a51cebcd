"""NPairsLoss equals PML's in value and gradient (float64, 1e-10) for every distance, from labels and
pair / triplet tuples; a block of queries against the whole batch gives its share of the whole loss
(what DistributedLoss relies on); a plain ref_emb is refused like PML."""

import pytest
import torch

import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, compare_losses, make_batch, make_distances, run_mode,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_parity_every_distance(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    value = run_mode(mode, ours.NPairsLoss(distance=ours_dist), pml_losses.NPairsLoss(distance=pml_dist),
                     seed=61, batch_size=16, num_classes=5)
    assert value > 1e-3


@pytest.mark.parametrize("mode", ["labels", "pairs"])
def test_defaults_and_sum(mode):
    run_mode(mode, ours.NPairsLoss(), pml_losses.NPairsLoss(), seed=62)
    run_mode(mode, ours.NPairsLoss(reducer=ours.SumReducer()),
             pml_losses.NPairsLoss(reducer=pml_reducers.SumReducer()), seed=62)


def test_unsorted_labels_and_singletons():
    """Classes with one row get no pair; the pair of a class is its first two rows."""
    emb, _ = make_batch(63, batch_size=10)
    labels = torch.tensor([7, 3, 9, 3, 7, 1, 5, 7, 3, 2])
    assert compare_losses(ours.NPairsLoss(), pml_losses.NPairsLoss(), emb, labels) > 1e-3


@pytest.mark.parametrize("labels", [torch.arange(8), torch.zeros(8, dtype=torch.long)], ids=["no-pos", "one-class"])
def test_no_pairs_or_one_class(labels):
    emb, _ = make_batch(64, batch_size=8)
    assert compare_losses(ours.NPairsLoss(), pml_losses.NPairsLoss(), emb, labels) == 0


def test_block_of_queries_equals_its_share():
    emb, labels = make_batch(65, batch_size=14, num_classes=5)
    whole = ours.NPairsLoss(reducer=ours.DoNothingReducer())(emb, labels)["loss"]
    in_block = (whole["indices"] >= 4) & (whole["indices"] < 11)
    got = ours.NPairsLoss(reducer=ours.SumReducer())(emb[4:11], labels[4:11], ref_emb=emb, ref_labels=labels,
                                                     query_ref_index=torch.arange(4, 11))
    assert in_block.any()
    assert_close(got, whole["losses"][in_block].sum())


def test_plain_ref_emb_is_refused_like_pml():
    emb, labels = make_batch(66)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml_losses.NPairsLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels)
    with pytest.raises(ValueError, match="NPairsLoss .*query_ref_index"):
        ours.NPairsLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels)


def test_labels_required():
    emb, _ = make_batch(67)
    with pytest.raises(ValueError, match="NPairsLoss needs labels"):
        ours.NPairsLoss()(emb, None, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))

"""Streamed SupCon equals the materialised SupCon (and so PML) in value and gradients, for every
distance, with and without ref_emb and an explicit query_ref_index; reducers unchanged."""

import pytest
import pytorch_metric_learning.losses as pml_losses
import torch

from dmlscale import losses
from dmlscale.kernels.label_pairs import pair_counts
from dmlscale.indices import matches_and_diffs
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, compare_losses, make_batch, make_distances, value_and_grads, assert_close


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("mode", ["labels", "ref_emb"])
def test_tiled_supcon_matches_pml(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    emb, labels = make_batch(21, batch_size=23, dim=6, num_classes=4)
    ours = losses.SupConLoss(temperature=0.3, distance=ours_dist, tiled=True, tile_size=5)
    theirs = pml_losses.SupConLoss(temperature=0.3, distance=pml_dist)
    if mode == "labels":
        value = compare_losses(ours, theirs, emb, labels)
    else:
        ref, ref_labels = make_batch(22, batch_size=17, dim=6, num_classes=4)
        value = compare_losses(ours, theirs, emb, labels, ref_emb=ref, ref_labels=ref_labels)
    assert value > 0.1


def test_tiled_supcon_block_of_rows_with_query_ref_index_equals_plain():
    emb, labels = make_batch(5, batch_size=30, dim=4, num_classes=3)
    rows = torch.arange(8, 19)

    def block_loss(tiled):
        loss = losses.SupConLoss(tiled=tiled, tile_size=4, reducer=losses.SumReducer())
        return lambda e: loss(e[rows], labels[rows], ref_emb=e, ref_labels=labels, query_ref_index=rows)

    v1, g1 = value_and_grads(block_loss(True), [emb])
    v2, g2 = value_and_grads(block_loss(False), [emb])
    assert v2 > 0.1
    assert_close(v1, v2)
    assert_close(g1[0], g2[0], what="gradient")


def test_auto_switch_and_pair_counts():
    assert losses.SupConLoss(tiled_threshold=10).uses_tiles(10) and not losses.SupConLoss().uses_tiles(4095)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    ref = torch.tensor([0, 1, 1, 2])
    for ref_labels, qri in [(labels, torch.arange(6)), (ref, torch.full((6,), -1))]:
        same, diff = matches_and_diffs(labels, ref_labels, qri)
        assert pair_counts(labels, ref_labels, qri) == (int(same.sum()), int(diff.sum()))
    with pytest.raises(ValueError, match="tile_size must be"):
        losses.SupConLoss(tile_size=0)

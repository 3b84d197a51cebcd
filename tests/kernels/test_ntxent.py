"""Streamed NTXentLoss equals PML's NTXentLoss and the materialised path in value and gradients
(float64 within 1e-10, float32 within 1e-5) for every distance, every input mode, tile sizes that do
not divide the batch, a block of rows with query_ref_index; and it never holds a B x R tensor."""

import pytest
import pytorch_metric_learning.losses as pml_losses
import torch

from dmlscale import losses
from dmlscale.indices import all_pairs
from tests.losses.test_ntxent_supcon_parity import LargestTensor
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, assert_close, make_batch, make_distances, run_mode, value_and_grads,
)


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_tiled_ntxent_matches_pml(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    ours = losses.NTXentLoss(temperature=0.3, distance=ours_dist, tiled=True, tile_size=5)
    value = run_mode(mode, ours, pml_losses.NTXentLoss(temperature=0.3, distance=pml_dist), seed=21, batch_size=23,
                     dim=6, num_classes=4)
    assert value.abs() > 1e-3


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_tiled_equals_materialised_in_float32(setting):
    # scale 0.4, temperature 0.5: unnormalised logits O(10); beyond, float32 itself errs by more than 1e-5
    emb, labels = make_batch(3, batch_size=29, dim=7, num_classes=5, scale=0.4)
    ref, ref_labels = make_batch(4, batch_size=19, dim=7, num_classes=5, scale=0.4)
    for kwargs in ({}, dict(ref_emb=ref.float(), ref_labels=ref_labels)):
        results = []
        for tiled in (True, False):
            loss = losses.NTXentLoss(temperature=0.5, distance=make_distances(*setting)[0], tiled=tiled, tile_size=8)
            inputs = [emb.float()] + ([kwargs["ref_emb"]] if kwargs else [])
            results.append(value_and_grads(
                lambda *x: loss(x[0], labels, ref_emb=x[1] if kwargs else None, ref_labels=kwargs.get("ref_labels")),
                inputs))
        (v1, g1), (v2, g2) = results
        assert v2.dtype == torch.float32 and v2.abs() > 1e-2
        assert_close(v1, v2, 1e-5)
        for a, b in zip(g1, g2):
            assert a.abs().sum() > 0
            assert_close(a, b, 1e-5, what="gradient")


def test_block_of_rows_with_query_ref_index_and_tuple_duplicates():
    emb, labels = make_batch(5, batch_size=30, dim=4, num_classes=3)
    rows = torch.arange(8, 19)
    a1, p, a2, n = all_pairs(labels[rows], labels, rows)
    keep = a2 != 0  # anchor 0 keeps its positives but loses every negative: its losses are 0
    tup = (torch.cat([a1, a1[:5]]), torch.cat([p, p[:5]]), torch.cat([a2[keep], a2[keep][::3]]),
           torch.cat([n[keep], n[keep][::3]]))
    for indices_tuple in (None, tup):
        def block_loss(tiled):
            loss = losses.NTXentLoss(temperature=0.4, tiled=tiled, tile_size=4, reducer=losses.SumReducer())
            return lambda e: loss(e[rows], labels[rows], indices_tuple, ref_emb=e, ref_labels=labels,
                                  query_ref_index=rows)

        v1, g1 = value_and_grads(block_loss(True), [emb])
        v2, g2 = value_and_grads(block_loss(False), [emb])
        assert v2 > 0.1
        assert_close(v1, v2)
        assert_close(g1[0], g2[0], what="gradient")


def test_streamed_path_never_holds_the_matrix_and_auto_switches():
    num_pairs, tile = 64, 16
    emb = torch.randn(2 * num_pairs, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(num_pairs).repeat(2)
    auto = losses.NTXentLoss(tile_size=tile, tiled_threshold=2 * num_pairs)
    assert auto.uses_tiles(2 * num_pairs) and not auto.uses_tiles(2 * num_pairs - 1)
    with LargestTensor() as probe:
        value = auto(emb, labels)
        value.backward()
    batch = 2 * num_pairs
    assert probe.max_numel <= max(tile * tile, batch * 8), (probe.max_numel, batch * batch)
    plain_v, plain_g = value_and_grads(lambda e: losses.NTXentLoss(tiled=False)(e, labels), [emb])
    assert_close(value.detach(), plain_v)
    assert_close(emb.grad, plain_g[0], what="gradient")


def test_large_logits_stay_finite_and_bad_settings_are_named():
    emb, labels = make_batch(8, batch_size=20, dim=5, num_classes=4, scale=30.0)
    dist = make_distances("DotProductSimilarity", dict(normalize_embeddings=False))
    v1, g1 = value_and_grads(lambda e: losses.NTXentLoss(0.05, distance=dist[0], tiled=True, tile_size=6)(e, labels),
                             [emb])
    v2, g2 = value_and_grads(lambda e: pml_losses.NTXentLoss(0.05, distance=dist[1])(e, labels), [emb])
    assert torch.isfinite(v1) and v1 > 1.0
    assert_close(v1, v2, 1e-9)
    assert_close(g1[0], g2[0], 1e-9, what="gradient")
    with pytest.raises(ValueError, match="tile_size must be a positive int, got 0"):
        losses.NTXentLoss(tile_size=0)
    with pytest.raises(ValueError, match="tiled must be None"):
        losses.NTXentLoss(tiled="yes")

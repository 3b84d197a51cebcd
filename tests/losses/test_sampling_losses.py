"""BatchHardTripletLoss and DistanceWeightedMarginLoss: PML compositions and hand-written formulas.

Legend: B batch, R reference rows, D embedding size, T mined triplets.
"""

import pytest
import torch
import torch.nn.functional as F

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

import dmlscale.losses as ours  # noqa: E402
from dmlscale.distances import LpDistance  # noqa: E402
import dmlscale.miners as ours_miners  # noqa: E402
from tests.parity import (  # noqa: E402
    DISTANCE_IDS, DISTANCE_SETTINGS, TOL, assert_close, compare_losses, make_batch, make_distances, value_and_grads,
)


class PmlMinedLoss:
    """PML's loss fed PML's miner output: the reference for our self-mining losses."""

    def __init__(self, loss, miner):
        self.loss, self.miner = loss, miner

    def __call__(self, emb_BD, labels_B, indices_tuple=None, ref_emb=None, ref_labels=None):
        assert indices_tuple is None
        mined = self.miner(emb_BD, labels_B, ref_emb, ref_labels)
        return self.loss(emb_BD, labels_B, mined, ref_emb, ref_labels)


def clustered(seed, batch_size, num_classes, dim=5):
    emb_BD, labels_B = make_batch(seed, batch_size=batch_size, dim=dim, num_classes=num_classes)
    centres_CD = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return emb_BD + centres_CD[labels_B], labels_B


# -- BatchHardTripletLoss ---------------------------------------------------------------------------
BATCH_HARD_VARIANTS = [dict(), dict(margin=0.3), dict(smooth_loss=True, margin=0.1), dict(swap=True, margin=0.3)]


@pytest.mark.parametrize("ref_mode", ["self", "ref_emb"])
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
@pytest.mark.parametrize("variant", BATCH_HARD_VARIANTS, ids=["default", "margin", "smooth", "swap"])
def test_batch_hard_triplet_equals_pml_triplet_with_batch_hard_miner(variant, setting, ref_mode):
    if variant.get("swap") and ref_mode == "ref_emb":
        pytest.skip("PML's swap indexes the query matrix with reference indices under ref_emb (a PML bug)")
    ours_dist, pml_dist = make_distances(*setting)
    emb_BD, labels_B = clustered(3, 12, 3)
    ref_kwargs = {}
    if ref_mode == "ref_emb":
        ref_RD, ref_labels_R = clustered(1003, 15, 3)
        ref_kwargs = dict(ref_emb=ref_RD, ref_labels=ref_labels_R)
    pml = PmlMinedLoss(pml_losses.TripletMarginLoss(distance=pml_dist, **variant),
                       pml_miners.BatchHardMiner(distance=pml_dist))
    value = compare_losses(ours.BatchHardTripletLoss(distance=ours_dist, **variant), pml, emb_BD, labels_B,
                           **ref_kwargs)
    assert value != 0, "batch should have violating hardest triplets"


def loop_batch_hard(emb_BD, labels_B, margin):
    """Reference written anchor by anchor: normalised L2, hardest positive / negative, mean of the non-zero hinges."""
    unit_BD = emb_BD / emb_BD.norm(dim=1, keepdim=True)
    hinges = []
    for i in range(len(labels_B)):
        dist_pos = [(unit_BD[i] - unit_BD[j]).norm() for j in range(len(labels_B))
                    if j != i and labels_B[j] == labels_B[i]]
        dist_neg = [(unit_BD[i] - unit_BD[k]).norm() for k in range(len(labels_B)) if labels_B[k] != labels_B[i]]
        if dist_pos and dist_neg:
            hinges.append(torch.clamp(torch.stack(dist_pos).max() - torch.stack(dist_neg).min() + margin, min=0))
    hinges = torch.stack(hinges)
    positive = hinges[hinges > 0]
    return positive.mean() if len(positive) else hinges.sum() * 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.05, 0.5])
def test_batch_hard_triplet_against_loop(seed, margin):
    emb_BD, labels_B = make_batch(seed, batch_size=7, dim=3, num_classes=3)
    labels_B[-1] = 5  # a singleton class: no positive, so no triplet for that anchor
    ours_value, (ours_grad,) = value_and_grads(lambda e: ours.BatchHardTripletLoss(margin=margin)(e, labels_B),
                                               [emb_BD])
    ref_value, (ref_grad,) = value_and_grads(lambda e: loop_batch_hard(e, labels_B, margin), [emb_BD])
    assert ref_value > 0
    assert_close(ours_value, ref_value, TOL, "loss value")
    assert_close(ours_grad, ref_grad, TOL, "gradient")


def test_batch_hard_triplet_rejects_indices_and_missing_labels():
    emb_BD, labels_B = make_batch(0)
    loss = ours.BatchHardTripletLoss()
    with pytest.raises(ValueError, match="indices_tuple"):
        loss(emb_BD, labels_B, indices_tuple=ours_miners.BatchHardMiner()(emb_BD, labels_B))
    with pytest.raises(ValueError, match="labels"):
        loss(emb_BD)
    with pytest.raises(ValueError, match="triplets_per_anchor"):
        ours.BatchHardTripletLoss(triplets_per_anchor=2)


# -- DistanceWeightedMarginLoss ---------------------------------------------------------------------
def margin_formula(emb_BD, labels_B, mined, alpha, beta, ref_RD=None):
    """sum_T([alpha + d_ap - beta]_+ + [alpha - d_an + beta]_+) / #(non-zero terms), by hand."""
    a_T, p_T, n_T = mined
    ref_RD = emb_BD if ref_RD is None else ref_RD
    unit_BD, unit_RD = F.normalize(emb_BD), F.normalize(ref_RD)
    d_ap = ((unit_BD[a_T] - unit_RD[p_T]) ** 2).sum(dim=1).sqrt()
    d_an = ((unit_BD[a_T] - unit_RD[n_T]) ** 2).sum(dim=1).sqrt()
    terms = torch.cat([torch.clamp(alpha + d_ap - beta, min=0), torch.clamp(alpha - d_an + beta, min=0)])
    return terms.sum() / (terms > 0).sum()


@pytest.mark.parametrize("ref_mode", ["self", "ref_emb"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", [dict(), dict(margin=0.1, beta=1.0)], ids=["default", "custom"])
def test_distance_weighted_margin_against_formula(config, seed, ref_mode):
    emb_BD, labels_B = clustered(seed, 16, 4, dim=8)
    ref_RD, ref_labels_R = clustered(seed + 50, 14, 4, dim=8) if ref_mode == "ref_emb" else (None, None)
    loss_fn = ours.DistanceWeightedMarginLoss(**config)
    # beta is held in torch's default dtype (as PML's MarginLoss does), so use the value the module holds
    assert loss_fn.beta.item() == pytest.approx(config.get("beta", 1.2), abs=1e-7)

    torch.manual_seed(seed)
    mined = ours_miners.DistanceWeightedMiner()(emb_BD, labels_B, ref_RD, ref_labels_R)
    assert len(mined[0]) > 0

    def ours_call(*leaves):
        torch.manual_seed(seed)
        return loss_fn(leaves[0], labels_B, ref_emb=leaves[1] if len(leaves) > 1 else None, ref_labels=ref_labels_R)

    def formula_call(*leaves):
        return margin_formula(leaves[0], labels_B, mined, config.get("margin", 0.2), loss_fn.beta.item(),
                              leaves[1] if len(leaves) > 1 else None)

    inputs = [emb_BD] if ref_RD is None else [emb_BD, ref_RD]
    ours_value, ours_grads = value_and_grads(ours_call, inputs)
    ref_value, ref_grads = value_and_grads(formula_call, inputs)
    assert ref_value > 0
    assert_close(ours_value, ref_value, TOL, "loss value")
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        assert_close(g_ours, g_ref, TOL, "gradient")


@pytest.mark.parametrize("learn_beta", [False, True])
def test_distance_weighted_margin_equals_pml_margin_loss_on_pml_samples(learn_beta):
    """Same seed: PML MarginLoss on PML DistanceWeightedMiner's triplets, including the gradient on beta."""
    emb_BD, labels_B = clustered(7, 16, 4, dim=8)
    ours_loss = ours.DistanceWeightedMarginLoss(learn_beta=learn_beta)
    pml_loss = PmlMinedLoss(pml_losses.MarginLoss(learn_beta=learn_beta), pml_miners.DistanceWeightedMiner())
    compare_losses(ours_loss, pml_loss, emb_BD, labels_B, seed=11)
    if learn_beta:
        ours_loss.beta.grad = pml_loss.loss.beta.grad = None
        for loss in (ours_loss, pml_loss):
            torch.manual_seed(11)
            loss(emb_BD, labels_B).backward()
        assert ours_loss.beta.grad is not None and ours_loss.beta.grad != 0
        assert_close(ours_loss.beta.grad, pml_loss.loss.beta.grad.reshape(()), 1e-6, "beta gradient")


def test_distance_weighted_margin_bad_config():
    with pytest.raises(ValueError, match="DistanceWeightedMiner requires"):
        ours.DistanceWeightedMarginLoss(distance=LpDistance(power=2))
    with pytest.raises(ValueError, match="'wide'"):
        ours.DistanceWeightedMarginLoss(margin="wide")
    with pytest.raises(ValueError, match="indices_tuple"):
        emb_BD, labels_B = make_batch(0)
        ours.DistanceWeightedMarginLoss()(emb_BD, labels_B, indices_tuple=(labels_B, labels_B, labels_B))

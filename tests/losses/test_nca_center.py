"""NCALoss equals PML's (float64, 1e-10); CenterLoss (absent from PML) equals a hand-written formula,
with hand-derived gradients, and its centres move toward the class means under SGD."""

import pytest
import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.reducers as pml_reducers
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
from tests.parity import (
    DISTANCE_IDS, DISTANCE_SETTINGS, INPUT_MODES, TOL, assert_close, compare_losses, make_batch, make_distances,
    run_mode,
)


# ---------------------------------------------------------------------------------------------- NCA
@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_nca_parity(setting, mode):
    ours_dist, pml_dist = make_distances(*setting)
    value = run_mode(mode, ours.NCALoss(distance=ours_dist, softmax_scale=2),
                     pml_losses.NCALoss(distance=pml_dist, softmax_scale=2), seed=29)
    assert value > 1e-3


@pytest.mark.parametrize("mode", INPUT_MODES)
@pytest.mark.parametrize("softmax_scale", [1, 0.25, 10])
def test_nca_default_distance(softmax_scale, mode):
    run_mode(mode, ours.NCALoss(softmax_scale=softmax_scale), pml_losses.NCALoss(softmax_scale=softmax_scale), seed=30)


def test_nca_label_layout_and_reducers():
    gen = torch.Generator().manual_seed(3)
    emb_BD = torch.randn(24, 5, generator=gen, dtype=torch.float64)
    labels_B = torch.arange(12).repeat(2)
    assert compare_losses(ours.NCALoss(), pml_losses.NCALoss(), emb_BD, labels_B) > 0.1
    for reducer in ("SumReducer", "AvgNonZeroReducer"):
        run_mode("pairs", ours.NCALoss(reducer=getattr(ours, reducer)()),
                 pml_losses.NCALoss(reducer=getattr(pml_reducers, reducer)()), seed=31)


def test_nca_anchor_without_same_class_is_dropped():
    emb_BD, _ = make_batch(6, batch_size=7)
    labels_B = torch.tensor([0, 0, 1, 1, 2, 2, 3])  # class 3 has one member
    compare_losses(ours.NCALoss(), pml_losses.NCALoss(), emb_BD, labels_B)


def test_nca_errors():
    with pytest.raises(ValueError, match="softmax_scale must be a positive number, got -1"):
        ours.NCALoss(softmax_scale=-1)
    with pytest.raises(ValueError, match="NCALoss needs labels"):
        ours.NCALoss()(torch.randn(4, 3), indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))


# ------------------------------------------------------------------------------------------- Center
def make_center_loss(num_classes=4, dim=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    return ours.CenterLoss(num_classes, dim, **kwargs).double()


def test_center_value_and_gradients_match_formula():
    loss_fn = make_center_loss()
    gen = torch.Generator().manual_seed(1)
    emb_BD = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels_B = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 0])
    value = loss_fn(emb_BD, labels_B)
    value.backward()
    centres_CD = loss_fn.centres_CD.detach()
    diff_BD = emb_BD.detach() - centres_CD[labels_B]
    expected = (diff_BD**2).sum(dim=1).mean()
    assert value > 0.1
    assert_close(value.detach(), expected)
    # dL/dx_i = 2 (x_i - c_{y_i}) / B;  dL/dc_k = -2/B sum_{i: y_i = k} (x_i - c_k)
    assert_close(emb_BD.grad, 2 * diff_BD / len(labels_B), what="grad wrt embeddings")
    expected_centre_grad = torch.zeros_like(centres_CD).index_add_(0, labels_B, -2 * diff_BD / len(labels_B))
    assert_close(loss_fn.centres_CD.grad, expected_centre_grad, what="grad wrt centres")


@pytest.mark.parametrize("setting", [("LpDistance", dict(normalize_embeddings=False)),
                                     ("LpDistance", dict(p=1, power=2, normalize_embeddings=False)),
                                     ("LpDistance", dict(power=2)),
                                     ("SNRDistance", dict())],
                         ids=["euclidean", "l1-squared", "normalised-sqeuclidean", "snr"])
def test_center_other_distances_equal_the_distance_of_each_row(setting):
    distance = getattr(ours_d, setting[0])(**setting[1])
    loss_fn = make_center_loss(distance=distance, seed=2)
    emb_BD, labels_B = make_batch(4, batch_size=10, num_classes=4)
    value = loss_fn(emb_BD, labels_B)
    # the same distance's full matrix against the centres, read at each sample's own class
    mat_BC = distance(emb_BD, loss_fn.centres_CD.detach())
    expected = mat_BC[torch.arange(10), labels_B].mean()
    assert value > 1e-3
    assert_close(value.detach(), expected, tol=1e-9)


def test_center_indices_tuple_weights_samples():
    loss_fn = make_center_loss()
    emb_BD, labels_B = make_batch(8, batch_size=8, num_classes=4)
    tup = (torch.tensor([0, 0, 3]), torch.tensor([4, 4, 7]), torch.tensor([1, 1, 2]))  # counts: 0,4 x2 ...
    value = loss_fn(emb_BD, labels_B, indices_tuple=tup)
    per_sample = ((emb_BD - loss_fn.centres_CD.detach()[labels_B]) ** 2).sum(dim=1)
    weights = torch.tensor([2, 2, 1, 1, 2, 0, 0, 1], dtype=torch.float64) / 2
    assert_close(value.detach(), (per_sample * weights).mean())


def test_center_sgd_pulls_centres_to_class_means():
    loss_fn = make_center_loss(num_classes=3, dim=4, seed=3)
    emb_BD, labels_B = make_batch(12, batch_size=30, dim=4, num_classes=3)
    emb_BD = emb_BD + 3 * torch.nn.functional.one_hot(labels_B, 4).double()  # separated classes
    means_CD = torch.stack([emb_BD[labels_B == k].mean(dim=0) for k in range(3)])
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    gap_before = (loss_fn.centres_CD.detach() - means_CD).norm(dim=1)
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss = loss_fn(emb_BD, labels_B)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    gap_after = (loss_fn.centres_CD.detach() - means_CD).norm(dim=1)
    assert torch.all(gap_after < 0.05 * gap_before), (gap_before, gap_after)
    assert losses[-1] < losses[0]


def test_center_errors_name_the_bad_values():
    loss_fn = make_center_loss(num_classes=4, dim=5)
    emb_BD = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 4\)"):
        loss_fn(emb_BD, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match=r"label -1 is outside"):
        loss_fn(emb_BD, torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="embeddings have size 6"):
        loss_fn(torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="float"):
        loss_fn(emb_BD, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="needs labels"):
        loss_fn(emb_BD)
    with pytest.raises(ValueError, match="ref_emb"):
        loss_fn(emb_BD, torch.tensor([0, 1, 2]), ref_emb=emb_BD.clone(), ref_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        ours.CenterLoss(0, 5)
    with pytest.raises(ValueError, match="embedding_size must be a positive int, got 2.5"):
        ours.CenterLoss(3, 2.5)
    with pytest.raises(ValueError, match="similarity CosineSimilarity"):
        ours.CenterLoss(3, 5, distance=ours_d.CosineSimilarity())


def test_center_zero_when_embeddings_sit_on_centres():
    loss_fn = make_center_loss()
    labels_B = torch.tensor([0, 1, 2, 3])
    emb_BD = loss_fn.centres_CD.detach()[labels_B].clone().requires_grad_(True)
    value = loss_fn(emb_BD, labels_B)
    value.backward()
    assert abs(value.item()) <= TOL and torch.all(torch.isfinite(emb_BD.grad))

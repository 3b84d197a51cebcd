"""Distances equal PML's matrices, pairwise values, gradients and statistics; bad settings are named."""

import pytest
import torch

import dmlscale.distances as ours
from tests.parity import DISTANCE_IDS, DISTANCE_SETTINGS, assert_close, make_distances, value_and_grads

pml_d = pytest.importorskip("pytorch_metric_learning.distances")


@pytest.mark.parametrize("with_ref", [False, True], ids=["self", "ref"])
@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_matrix_and_gradient_match_pml(setting, with_ref):
    ours_dist, pml_dist = make_distances(*setting)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    r = torch.randn(7, 6, generator=gen, dtype=torch.float64) if with_ref else None
    weights = torch.randn(9, 7 if with_ref else 9, generator=gen, dtype=torch.float64)
    inputs = [q] if r is None else [q, r]

    def weighted_sum(dist):
        return lambda *x: (dist(*x) * weights).sum()

    ours_val, ours_grads = value_and_grads(weighted_sum(ours_dist), inputs)
    pml_val, pml_grads = value_and_grads(weighted_sum(pml_dist), inputs)
    assert_close(ours_dist(*inputs), pml_dist(*inputs), what="matrix")
    assert_close(ours_val, pml_val)
    for g1, g2 in zip(ours_grads, pml_grads):
        assert g1.abs().sum() > 0
        assert_close(g1, g2, what="gradient")


@pytest.mark.parametrize("setting", DISTANCE_SETTINGS, ids=DISTANCE_IDS)
def test_pairwise_distance_and_helpers_match_pml(setting):
    ours_dist, pml_dist = make_distances(*setting)
    gen = torch.Generator().manual_seed(1)
    q, r = torch.randn(2, 8, 5, generator=gen, dtype=torch.float64)
    assert_close(ours_dist.pairwise_distance(q, r), pml_dist.pairwise_distance(q, r), what="pairwise")
    assert ours_dist.is_inverted == pml_dist.is_inverted
    x, y = torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.1])
    assert torch.equal(ours_dist.margin(x, y), pml_dist.margin(x, y))
    assert torch.equal(ours_dist.smallest_dist(x, y), pml_dist.smallest_dist(x, y))
    assert torch.equal(ours_dist.largest_dist(x, y), pml_dist.largest_dist(x, y))


def test_snr_is_variance_ratio_and_never_builds_pairwise_difference_tensor():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    r = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    mat = ours.SNRDistance(normalize_embeddings=False)(q, r)
    for i in range(4):
        for j in range(3):
            expected = torch.var(q[i] - r[j]) / torch.var(q[i])
            assert abs(mat[i, j].item() - expected.item()) < 1e-12
    # self-distance is zero and the matrix is not symmetric in general
    self_mat = ours.SNRDistance()(q)
    assert self_mat.diagonal().abs().max() < 1e-12
    assert not torch.allclose(self_mat, self_mat.t())


def test_collect_stats_match_pml():
    ours_dist = ours.LpDistance(collect_stats=True, normalize_embeddings=True)
    pml_dist = pml_d.LpDistance(collect_stats=True, normalize_embeddings=True)
    gen = torch.Generator().manual_seed(3)
    q, r = torch.randn(5, 4, generator=gen) * 3, torch.randn(6, 4, generator=gen) * 2
    ours_dist(q, r)
    pml_dist(q, r)
    for name in ["initial_avg_query_norm", "initial_avg_ref_norm", "final_avg_query_norm", "final_avg_ref_norm"]:
        assert getattr(ours_dist, name) == pytest.approx(getattr(pml_dist, name), rel=1e-6), name
    assert ours_dist.initial_avg_query_norm > 2.0 and ours_dist.final_avg_query_norm == pytest.approx(1.0)
    quiet, pml_quiet = ours.LpDistance(), pml_d.LpDistance()
    quiet(q, r)
    pml_quiet(q, r)
    # statistics off (PML's default): the attributes do not exist, as in PML
    assert not hasattr(quiet, "initial_avg_query_norm") and not hasattr(pml_quiet, "initial_avg_query_norm")


def test_defaults_match_pml():
    for name in ["LpDistance", "CosineSimilarity", "DotProductSimilarity", "SNRDistance"]:
        a, b = getattr(ours, name)(), getattr(pml_d, name)()
        for attr in ["normalize_embeddings", "p", "power", "is_inverted", "collect_stats"]:
            assert getattr(a, attr) == getattr(b, attr), (name, attr)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ours.LpDistance(is_inverted=True), "is_inverted"),
        (lambda: ours.CosineSimilarity(normalize_embeddings=False), "normalize_embeddings"),
        (lambda: ours.DotProductSimilarity(is_inverted=False), "is_inverted"),
        (lambda: ours.LpDistance(p=0), "p must be"),
        (lambda: ours.LpDistance(power=-1), "power"),
    ],
)
def test_bad_settings_raise_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_shapes_are_named():
    dist = ours.CosineSimilarity()
    with pytest.raises(ValueError, match=r"query embeddings.*\(4,\)"):
        dist(torch.randn(4))
    with pytest.raises(ValueError, match="5 vs 3"):
        dist(torch.randn(4, 5), torch.randn(2, 3))
    with pytest.raises(ValueError, match="floating"):
        dist(torch.ones(4, 5, dtype=torch.long))


class MultiVectorDistance(ours.BaseDistance):
    """A custom distance over (B, K, D) embeddings: the Euclidean distance of the K-vector means. It overrides
    check_shapes to admit 3-D input, which PML allows since the loss leaves that check to the distance."""

    def check_shapes(self, query_emb, ref_emb):
        if query_emb.ndim != 3 or (ref_emb is not None and ref_emb.ndim != 3):
            raise ValueError(f"MultiVectorDistance wants (B, K, D) embeddings, got {tuple(query_emb.shape)}")

    def compute_mat(self, query_emb, ref_emb):
        return torch.cdist(query_emb.mean(dim=1), ref_emb.mean(dim=1))


class PMLMultiVectorDistance(pml_d.BaseDistance):
    def check_shapes(self, query_emb, ref_emb):
        MultiVectorDistance.check_shapes(self, query_emb, ref_emb)

    def compute_mat(self, query_emb, ref_emb):
        return torch.cdist(query_emb.mean(dim=1), ref_emb.mean(dim=1))


def test_a_custom_distance_decides_the_embedding_shape_like_pml():
    """Losses and miners leave the shape check to the distance (PML), so 3-D embeddings reach a distance that
    admits them, and a 2-D batch is refused by that distance's own message."""
    import pytorch_metric_learning.losses as pml_losses
    import pytorch_metric_learning.miners as pml_miners

    import dmlscale.losses as ours_losses
    import dmlscale.miners as ours_miners

    gen = torch.Generator().manual_seed(5)
    emb_BKD = torch.randn(9, 4, 3, generator=gen, dtype=torch.float64)
    ref_RKD = torch.randn(7, 4, 3, generator=gen, dtype=torch.float64)
    labels_B, ref_labels_R = torch.arange(9) % 3, torch.arange(7) % 3
    for ref in ({}, dict(ref_emb=ref_RKD, ref_labels=ref_labels_R)):
        for name, options in [("TripletMarginLoss", dict(margin=0.5)), ("ContrastiveLoss", dict())]:
            mine = getattr(ours_losses, name)(distance=MultiVectorDistance(normalize_embeddings=False), **options)
            theirs = getattr(pml_losses, name)(distance=PMLMultiVectorDistance(normalize_embeddings=False), **options)
            assert mine(emb_BKD, labels_B, **ref).item() == pytest.approx(theirs(emb_BKD, labels_B, **ref).item(), rel=1e-12)
        mined = ours_miners.TripletMarginMiner(margin=0.5, distance=MultiVectorDistance(normalize_embeddings=False))(
            emb_BKD, labels_B, **ref)
        expected = pml_miners.TripletMarginMiner(margin=0.5, distance=PMLMultiVectorDistance(normalize_embeddings=False))(
            emb_BKD, labels_B, **ref)
        assert all(torch.equal(x, y) for x, y in zip(mined, expected)) and len(mined[0]) > 0
    loss = ours_losses.TripletMarginLoss(distance=MultiVectorDistance(normalize_embeddings=False))
    with pytest.raises(ValueError, match=r"MultiVectorDistance wants \(B, K, D\) embeddings, got \(9, 12\)"):
        loss(emb_BKD.reshape(9, 12), labels_B)
    with pytest.raises(ValueError, match=r"query embeddings must have shape"):
        ours_losses.TripletMarginLoss()(emb_BKD, labels_B)  # the default distance keeps the 2-D rule


def _record_chunks(batched_cls, distance, batch_size, q, r):
    calls = []
    batched = batched_cls(distance, iter_fn=lambda mat, s, e: calls.append((mat.detach().clone(), s, e)),
                          batch_size=batch_size)
    assert batched(q, r) is None
    return calls


@pytest.mark.parametrize("batch_size", [1, 4, 9, 32])
@pytest.mark.parametrize("with_ref", [False, True], ids=["self", "ref"])
@pytest.mark.parametrize("setting", [DISTANCE_SETTINGS[i] for i in (0, 3, 6, 9)],
                         ids=[DISTANCE_IDS[i] for i in (0, 3, 6, 9)])
def test_batched_distance_matches_pml_chunk_by_chunk(setting, with_ref, batch_size):
    """Same chunks (incl. a last partial one: 9 rows in 4s), same matrices, same (s, e) calls as PML."""
    ours_dist, pml_dist = make_distances(*setting)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    r = torch.randn(7, 6, generator=gen, dtype=torch.float64) if with_ref else None
    ours_calls = _record_chunks(ours.BatchedDistance, ours_dist, batch_size, q, r)
    pml_calls = _record_chunks(pml_d.BatchedDistance, pml_dist, batch_size, q, r)
    assert [(s, e) for _, s, e in ours_calls] == [(s, e) for _, s, e in pml_calls]
    assert len(ours_calls) == -(-9 // batch_size)
    for (ours_mat, _, _), (pml_mat, _, _) in zip(ours_calls, pml_calls):
        assert_close(ours_mat, pml_mat, what="chunk matrix")
    assert_close(torch.cat([m for m, _, _ in ours_calls]), ours_dist(q, r), what="stitched matrix")


def test_batched_distance_forwards_attributes_and_checks_settings():
    batched = ours.BatchedDistance(ours.CosineSimilarity(), batch_size=3)
    assert batched.is_inverted is True and batched.batch_size == 3
    with pytest.raises(ValueError, match="iter_fn is None"):
        batched(torch.randn(4, 2))
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {bad!r}"):
            ours.BatchedDistance(ours.LpDistance(), batch_size=bad)
    with pytest.raises(ValueError, match="iter_fn must be callable"):
        ours.BatchedDistance(ours.LpDistance(), iter_fn=3)

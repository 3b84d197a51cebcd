"""Streamed similarity statistics equal a brute-force computation on the full matrix (float64),
for tile sizes that do not divide the sizes; samples are bounded, seeded and drawn from the matrix."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmlscale.monitor import clip_similarity_stats, label_similarity_stats


def brute_force(query, ref, labels_q, labels_r, self_index, margin):
    """Full Q x R matrix and explicit loops over anchors, positives and negatives."""
    sim = F.normalize(query.double(), dim=1) @ F.normalize(ref.double(), dim=1).T
    pos, neg, hardest, active, triplets = [], [], [], 0, 0
    for a in range(sim.shape[0]):
        pos_a = [sim[a, r].item() for r in range(sim.shape[1])
                 if labels_q[a] == labels_r[r] and (self_index is None or r != self_index[a])]
        neg_a = [sim[a, r].item() for r in range(sim.shape[1]) if labels_q[a] != labels_r[r]]
        pos += pos_a
        neg += neg_a
        if neg_a:
            hardest.append(max(neg_a))
        for s_ap in pos_a:
            triplets += len(neg_a)
            active += sum(s_an > s_ap - margin for s_an in neg_a)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"sim/pos_mean": mean(pos), "sim/neg_mean": mean(neg), "sim/hardest_neg_mean": mean(hardest),
            "sim/active_triplet_fraction": active / triplets}, pos, neg


def assert_metrics_equal(stats, expected):
    got = stats.metrics()
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("tile_size", [1, 7, 16, 1000])
def test_labels_within_the_batch_match_brute_force(tile_size):
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(37, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (37,), generator=generator)
    stats = label_similarity_stats(emb, labels, margin=0.3, tile_size=tile_size)
    expected, pos, neg = brute_force(emb, emb, labels, labels, torch.arange(37), 0.3)
    assert_metrics_equal(stats, expected)
    assert stats.num_pos == len(pos) and stats.num_neg == len(neg)


@pytest.mark.parametrize("row_offset", [None, 0, 11])
def test_labels_against_a_global_reference_match_brute_force(row_offset):
    generator = torch.Generator().manual_seed(1)
    ref = torch.randn(41, 5, generator=generator, dtype=torch.float64)
    ref_labels = torch.randint(0, 4, (41,), generator=generator)
    start = 0 if row_offset is None else row_offset
    query = ref[start:start + 13] if row_offset is not None else torch.randn(13, 5, generator=generator,
                                                                            dtype=torch.float64)
    labels = ref_labels[start:start + 13] if row_offset is not None else torch.randint(0, 4, (13,), generator=generator)
    stats = label_similarity_stats(query, labels, ref_emb_RD=ref, ref_labels_R=ref_labels, row_offset=row_offset,
                                   margin=0.1, tile_size=6)
    self_index = None if row_offset is None else torch.arange(row_offset, row_offset + 13)
    expected, _, _ = brute_force(query, ref, labels, ref_labels, self_index, 0.1)
    assert_metrics_equal(stats, expected)


def test_clip_rows_with_a_global_offset_match_brute_force_and_merge_across_ranks():
    generator = torch.Generator().manual_seed(2)
    text = torch.randn(29, 8, generator=generator, dtype=torch.float64)
    image = text + 0.8 * torch.randn(29, 8, generator=generator, dtype=torch.float64)
    labels = torch.arange(29)
    expected, pos, _ = brute_force(image, text, labels, labels, None, 0.2)
    # two "ranks": rows 0-16 and 17-28 against all 29 texts, then summed
    part_a = clip_similarity_stats(image[:17], text, row_offset=0, tile_size=5)
    part_b = clip_similarity_stats(image[17:], text, row_offset=17, tile_size=5)
    empty_rank = clip_similarity_stats(image[:0], text, row_offset=29, tile_size=5)  # a rank with no rows
    merged = part_a.merge(part_b).merge(empty_rank)
    assert_metrics_equal(merged, expected)
    assert merged.num_pos == 29 and merged.num_triplets == 29 * 28
    assert_metrics_equal(clip_similarity_stats(image, text, tile_size=1000), expected)
    assert sorted(merged.pos_samples_K.tolist()) == pytest.approx(sorted(pos), abs=1e-12)


def test_samples_are_bounded_seeded_and_come_from_the_matrix():
    generator = torch.Generator().manual_seed(3)
    emb = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    labels = torch.arange(50) % 3
    _, pos, neg = brute_force(emb, emb, labels, labels, torch.arange(50), 0.2)
    stats = label_similarity_stats(emb, labels, tile_size=9, max_samples=100, seed=7)
    again = label_similarity_stats(emb, labels, tile_size=9, max_samples=100, seed=7)
    other = label_similarity_stats(emb, labels, tile_size=9, max_samples=100, seed=8)
    assert stats.pos_samples_K.shape == (100,) and stats.neg_samples_K.shape == (100,)
    assert torch.equal(stats.neg_samples_K, again.neg_samples_K)
    assert not torch.equal(stats.neg_samples_K, other.neg_samples_K)
    for sample, population in ((stats.pos_samples_K, pos), (stats.neg_samples_K, neg)):
        population = torch.tensor(population)
        assert all((population - value).abs().min() < 1e-12 for value in sample)
    every = label_similarity_stats(emb, labels, tile_size=9, max_samples=10_000)
    assert sorted(every.neg_samples_K.tolist()) == pytest.approx(sorted(neg), abs=1e-12)
    assert label_similarity_stats(emb, labels, max_samples=0).pos_samples_K.numel() == 0


def test_empty_counts_give_nan_and_bad_arguments_raise():
    emb = torch.randn(4, 3, dtype=torch.float64)
    stats = label_similarity_stats(emb, torch.arange(4))  # every label distinct: no positives
    metrics = stats.metrics()
    assert math.isnan(metrics["sim/pos_mean"]) and math.isnan(metrics["sim/active_triplet_fraction"])
    assert stats.num_neg == 12 and stats.num_triplets == 0
    with pytest.raises(ValueError, match="row_offset"):
        clip_similarity_stats(emb, emb, row_offset=1)
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 2\)"):
        clip_similarity_stats(emb, emb[:, :2])
    with pytest.raises(ValueError, match="tile_size"):
        label_similarity_stats(emb, torch.arange(4), tile_size=0)
    with pytest.raises(ValueError, match="ref_labels_R"):
        label_similarity_stats(emb, torch.arange(4), ref_emb_RD=emb)
    with pytest.raises(ValueError, match=r"labels_Q must have shape \(4,\)"):
        label_similarity_stats(emb, torch.arange(3))

"""Image-text retrieval: ranks worked out by hand, open_clip's metrics, brute force with several captions."""

import math

import numpy as np
import pytest
import torch

from dmlscale.eval import retrieval_metrics


def at_angles(degrees, norms=None):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    points = torch.stack([radians.cos(), radians.sin()], dim=1)
    return points if norms is None else points * torch.tensor(norms, dtype=torch.float64)[:, None]


def test_several_captions_per_image_by_hand():
    """Points on a circle; cosine order = angular distance. Ranks below are worked out on paper.

    images at 0, 90, 200 deg; captions (image) at 120 (0), 30 (0), 165 (1), 70 (2), 260 (2) deg.
    image->text ranks of the best correct caption: [1, 4, 2]; text->image ranks: [3, 1, 2, 3, 1].
    """
    images = at_angles([0, 90, 200], norms=[2.0, 0.5, 3.0])  # norms must not matter (cosine)
    texts = at_angles([120, 30, 165, 70, 260], norms=[1.0, 4.0, 0.2, 1.5, 1.0])
    index = torch.tensor([0, 0, 1, 2, 2])
    for chunk_size in (1, 2, 4, 100):
        m = retrieval_metrics(images, texts, index, ks=(1, 2, 3, 5), chunk_size=chunk_size)
        assert m["image_to_text_R@1"] == pytest.approx(1 / 3) and m["image_to_text_R@2"] == pytest.approx(2 / 3)
        assert m["image_to_text_R@3"] == pytest.approx(2 / 3) and m["image_to_text_R@5"] == 1.0
        assert m["image_to_text_mean_rank"] == pytest.approx(7 / 3) and m["image_to_text_median_rank"] == 2.0
        assert m["text_to_image_R@1"] == pytest.approx(2 / 5) and m["text_to_image_R@2"] == pytest.approx(3 / 5)
        assert m["text_to_image_R@3"] == 1.0 and m["text_to_image_mean_rank"] == pytest.approx(2.0)
        assert m["text_to_image_median_rank"] == 2.0


def test_ties_are_broken_by_lower_index():
    """Two identical images: caption 0 (of image 1) = image direction, caption 1 (of image 0) orthogonal.
    Text->image: caption 0 ties both images, image 0 comes first -> rank 2; caption 1 scores 0 on both -> 1.
    Image->text: image 0's caption 1 scores 0 < 1 -> rank 2; image 1's caption 0 -> rank 1."""
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(images, texts, torch.tensor([1, 0]), ks=(1,))
    assert m["text_to_image_mean_rank"] == 1.5 and m["text_to_image_R@1"] == 0.5
    assert m["image_to_text_mean_rank"] == 1.5 and m["image_to_text_R@1"] == 0.5


def test_one_caption_per_image_equals_open_clip():
    train = pytest.importorskip("open_clip_train.train")
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(83, 16, generator=gen), dim=1)
    texts = torch.nn.functional.normalize(images + 1.2 * torch.randn(83, 16, generator=gen), dim=1)
    expected = train.get_clip_metrics(images, texts, 1.0)
    ours = retrieval_metrics(images, texts, chunk_size=10)
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key


def brute_force_ranks(images, texts, index):
    """Full similarity matrix, stable sort, rank of the best correct entry (independent of the chunked code)."""
    sims = torch.nn.functional.normalize(images, dim=1) @ torch.nn.functional.normalize(texts, dim=1).t()
    i2t = []
    for i, row in enumerate(sims):
        order = torch.sort(row, descending=True, stable=True).indices.tolist()
        i2t.append(1 + min(order.index(m) for m in range(len(index)) if index[m] == i))
    t2i = [1 + torch.sort(sims[:, m], descending=True, stable=True).indices.tolist().index(int(index[m]))
           for m in range(len(index))]
    return np.array(i2t), np.array(t2i)


def test_several_captions_equal_brute_force_for_any_chunk_size():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(41, 8, generator=gen, dtype=torch.float64)
    index = torch.cat([torch.arange(41), torch.randint(0, 41, (60,), generator=gen)])
    index = index[torch.randperm(len(index), generator=gen)]
    texts = images[index] + 1.5 * torch.randn(len(index), 8, generator=gen, dtype=torch.float64)
    i2t, t2i = brute_force_ranks(images, texts, index)
    results = [retrieval_metrics(images, texts, index, chunk_size=c) for c in (1, 7, 41, 500)]
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        expected = {f"{name}_R@{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}
        expected[f"{name}_mean_rank"] = float(ranks.mean())
        expected[f"{name}_median_rank"] = float(np.floor(np.median(ranks)))
        for result in results:
            for key, value in expected.items():
                assert result[key] == pytest.approx(value, abs=1e-12), key
    assert results[0] == results[1] == results[2] == results[3]


def test_bad_inputs_name_the_value():
    images, texts = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"text_image_index\[2\]=3 is outside \[0, 3\)"):
        retrieval_metrics(images, texts, torch.tensor([0, 1, 3, 2, 2]))
    with pytest.raises(ValueError, match=r"images \[1\] have no caption"):
        retrieval_metrics(images, texts, torch.tensor([0, 0, 2, 2, 2]))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        retrieval_metrics(images, texts, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 images and 5 captions"):
        retrieval_metrics(images, texts)
    with pytest.raises(ValueError, match="dimension 4 but text_features have 2"):
        retrieval_metrics(images, torch.randn(3, 2))
    with pytest.raises(ValueError, match="ks must be a positive int, got 0"):
        retrieval_metrics(images, images, ks=(1, 0))
    with pytest.raises(ValueError, match="integer tensor"):
        retrieval_metrics(images, texts, torch.tensor([0.0, 1, 2, 2, 2]))

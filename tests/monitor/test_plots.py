"""Plots: valid PNG files of the expected pixel size that are not blank, for curves and histograms."""

import struct

import pytest
import torch

from dmlscale.monitor import plot_curves, plot_similarity_histograms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, read by hand."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def ink_fraction(path):
    """Share of pixels that are not the white background."""
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    return float((pixels.sum(-1) < 2.9).mean())


def test_curves_png_from_jsonl_records(tmp_path):
    records = [{"step": step, "time": 0.0, "metrics": {"loss/total": 2.0 / (1 + step), "loss/clip": 1.5 / (1 + step)}}
               for step in range(0, 200, 10)]
    records += [{"step": step, "time": 0.0, "metrics": {"eval/recall@1": step / 400, "eval/top1_acc": step / 300}}
                for step in (50, 100, 150)]
    path = plot_curves(records, tmp_path / "plots" / "curves.png")
    assert path == tmp_path / "plots" / "curves.png"
    assert png_size(path) == (1320, 495)  # 12 x 4.5 inches at 110 dpi
    assert path.stat().st_size > 20_000 and 0.02 < ink_fraction(path) < 0.5


def test_curves_with_no_scores_yet_and_flat_records(tmp_path):
    path = plot_curves([{"step": 0, "loss": 1.0}, {"step": 1, "loss": float("nan")}], tmp_path / "c.png",
                       title="Quickstart")
    assert png_size(path) == (1320, 495) and ink_fraction(path) > 0.01


def test_similarity_histograms_png(tmp_path):
    generator = torch.Generator().manual_seed(0)
    pos = 0.6 + 0.1 * torch.randn(500, generator=generator)
    neg = 0.1 * torch.randn(5000, generator=generator)
    path = plot_similarity_histograms(pos, neg, tmp_path / "similarity.png", step=120)
    assert png_size(path) == (770, 495)
    assert path.stat().st_size > 15_000 and 0.02 < ink_fraction(path) < 0.6
    empty = plot_similarity_histograms([], [], tmp_path / "empty.png")
    assert png_size(empty) == (770, 495)


def test_a_path_that_is_not_png_raises(tmp_path):
    with pytest.raises(ValueError, match="curves.jpg"):
        plot_curves([{"step": 0, "loss": 1.0}], tmp_path / "curves.jpg")

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


def trainer_like_metrics(path, *, eval_steps=(100, 200, 300)):
    """A metrics.jsonl written by the project's MetricsLog with the keys the trainer logs."""
    from dmlscale.monitor import MetricsLog

    log = MetricsLog(path)
    scores = dict(zip(eval_steps, (0.91, 0.95, 0.97)))
    for step in range(10, 301, 10):
        log.log({"train/loss": 4.0 / step ** 0.5, "train/lr": 2e-3 * min(1.0, step / 30), "train/grad_norm": 30.0 / step,
                 "train/logit_scale": 10.0 + step / 30, "perf/step_time_s": 0.2, "train/sim/pos_mean": 0.5}, step)
        if step in scores:  # evaluation: a second line at the same step, as the trainer writes it
            log.log({"eval/zero_shot_top1": scores[step], "eval/zero_shot_top5": min(1.0, scores[step] + 0.03),
                     "eval/num_samples": 450}, step)
    return path


def test_curves_figure_names_the_run_and_draws_lr_grad_norm_logit_scale(tmp_path):
    from dmlscale.monitor import curves_figure, read_metrics, run_title

    records = read_metrics(trainer_like_metrics(tmp_path / "metrics.jsonl"))
    fig = curves_figure(records, title=run_title("quickstart", tmp_path / "runs" / "mine"))
    assert fig._suptitle.get_text() == f"run 'quickstart' ({tmp_path / 'runs' / 'mine'})"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Training losses", "Evaluation scores", "Learning rate", "Gradient norm", "Logit scale"]
    by_title = {ax.get_title(): ax for ax in fig.axes}
    lr_line, = by_title["Learning rate"].get_lines()
    assert lr_line.get_label() == "train/lr" and max(lr_line.get_ydata()) == pytest.approx(2e-3)
    assert by_title["Gradient norm"].get_yscale() == "log"
    assert list(by_title["Logit scale"].get_lines()[0].get_xdata()) == list(range(10, 301, 10))
    # the evaluation axis fits the scores (0.91-1.0) and steps (100-300), not 0-1 and 0-300
    scores = by_title["Evaluation scores"]
    assert {line.get_label() for line in scores.get_lines()} == {"eval/zero_shot_top1", "eval/zero_shot_top5"}
    low, high = scores.get_ylim()
    assert 0.85 < low < 0.91 and 1.0 < high < 1.05
    left, right = scores.get_xlim()
    assert 80 <= left < 100 and 300 < right <= 320
    assert by_title["Training losses"].get_lines()[0].get_label() == "train/loss"
    # the PNG: 3 rows of 2 panels, the sixth slot left empty
    path = plot_curves(records, tmp_path / "curves.png", title="run 'quickstart'")
    assert png_size(path) == (1320, 1485)


def test_curves_without_training_signals_keep_two_panels(tmp_path):
    from dmlscale.monitor import curves_figure

    fig = curves_figure([{"step": 1, "train/loss": 1.0}, {"step": 2, "eval/recall@1": 0.5}])
    assert [ax.get_title() for ax in fig.axes] == ["Training losses", "Evaluation scores"]

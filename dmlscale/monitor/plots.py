"""PNG plots for the run folder (matplotlib's Agg canvas, imported on first use, no pyplot).

`plot_curves` draws the training losses, the evaluation scores and (when logged) the learning rate,
gradient norm and logit scale against the optimizer step; `curves_figure` returns that Figure;
`plot_similarity_histograms` overlays the positive and negative similarity distributions.
Both return the path they wrote, ready for `WandbRun.log_images`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib and torch load only when a plot is drawn
    import torch
    from matplotlib.figure import Figure

ACCURACY_WORDS = ("acc", "recall", "r@", "precision", "top1", "top5", "map", "ndcg", "reciprocal")


def _figure(**kwargs):
    """A Figure on an Agg canvas, without pyplot: no global backend switch, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _series(records: Iterable[Mapping], keys: Sequence[str]) -> dict[str, tuple[list, list]]:
    """Per key the (steps, values) where the key has a finite number; records are flat
    (`{"step": s, name: value}`, as `read_metrics` gives) or nested (`{"step", "metrics": {...}}`)."""
    out: dict[str, tuple[list, list]] = {key: ([], []) for key in keys}
    for record in records:
        metrics = record.get("metrics", record)
        for key in keys:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[key][0].append(record["step"])
                out[key][1].append(value)
    return {key: xy for key, xy in out.items() if xy[0]}


def _metric_names(records: Iterable[Mapping]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.get("metrics", record)))
    names.pop("step", None)
    names.pop("time", None)
    return list(names)


# Training signals drawn in a panel of their own when the run logged them (train/step_metrics.py, trainer):
# key -> (panel title, y-axis label, log scale)
SIGNAL_PANELS = {
    "train/lr": ("Learning rate", "learning rate (AdamW, after warmup/cosine)", False),
    "train/grad_norm": ("Gradient norm", "global L2 norm, before clipping", True),
    "train/logit_scale": ("Logit scale", "exp(logit_scale) = 1 / temperature", False),
    "train/logit_bias": ("Logit bias", "logit bias (SigLIP)", False),
}


def run_title(name: str, run_dir: str | Path | None = None) -> str:
    """A figure title naming the run: its config name, and its folder when that is named differently."""
    folder = Path(run_dir).name if run_dir is not None else ""
    return f"run {name!r}" + (f" ({run_dir})" if folder and folder != name else "")


def _fit_to_data(ax, series: Mapping[str, tuple[list, list]]) -> None:
    """Axis limits around the plotted points, with a margin; never forced to start at 0."""
    steps = [s for xs, _ in series.values() for s in xs]
    values = [v for _, ys in series.values() for v in ys]
    x_pad = max(1.0, 0.05 * (max(steps) - min(steps)))
    y_pad = max(0.05 * (max(values) - min(values)), 0.01 * max(abs(v) for v in values), 1e-3)
    ax.set_xlim(min(steps) - x_pad, max(steps) + x_pad)
    ax.set_ylim(min(values) - y_pad, max(values) + y_pad)


def curves_figure(records: Sequence[Mapping], *, loss_keys: Sequence[str] | None = None,
                  accuracy_keys: Sequence[str] | None = None, title: str = "Training run") -> Figure:
    """The matplotlib Figure of `plot_curves` (its axes' titles and labels say what each panel shows).

    Panels: training losses and evaluation scores, then one panel for each of SIGNAL_PANELS that the
    records hold (learning rate, gradient norm, logit scale, logit bias). Default keys: every metric whose
    name contains "loss"; every metric whose name contains one of ACCURACY_WORDS (case-insensitive) and is
    not a loss. Scores are fractions in [0, 1]; their axes are fitted to the scores logged (both step
    and value), so evaluations late in a run, or close to 1, are not squeezed against the origin."""
    names = _metric_names(records)
    if loss_keys is None:
        loss_keys = [name for name in names if "loss" in name.lower()]
    if accuracy_keys is None:
        accuracy_keys = [name for name in names if "loss" not in name.lower()
                         and any(word in name.lower() for word in ACCURACY_WORDS)]
    panels = [(loss_keys, "Training losses", "loss value (per sample, unitless)", False, False),
              (accuracy_keys, "Evaluation scores", "score (fraction, 0-1)", False, True)]
    panels += [([key], panel_title, ylabel, log_scale, False)
               for key, (panel_title, ylabel, log_scale) in SIGNAL_PANELS.items() if key in names]
    num_rows = (len(panels) + 1) // 2
    fig = _figure(figsize=(12, 4.5 * num_rows), layout="constrained")
    axes = fig.subplots(num_rows, 2, squeeze=False).ravel()
    for ax, (keys, panel_title, ylabel, log_scale, fit) in zip(axes, panels):
        series = _series(records, keys)
        for key, (steps, values) in series.items():
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        if len(series) > 3:  # many series: the legend goes under the panel, clear of the curves
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        elif series:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        if series and fit:
            _fit_to_data(ax, series)
        if series and log_scale and all(v > 0 for _, ys in series.values() for v in ys):
            ax.set_yscale("log")
        ax.set_title(panel_title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return fig


def plot_curves(records: Sequence[Mapping], path: str | Path, *, loss_keys: Sequence[str] | None = None,
                accuracy_keys: Sequence[str] | None = None, title: str = "Training run") -> Path:
    """Write `curves_figure(records, ...)` (losses, evaluation scores, and learning rate, gradient norm and
    logit scale when logged) to the PNG `path`."""
    return _save(curves_figure(records, loss_keys=loss_keys, accuracy_keys=accuracy_keys, title=title), path)


def plot_similarity_histograms(pos_sims: Sequence[float] | torch.Tensor, neg_sims: Sequence[float] | torch.Tensor,
                               path: str | Path, *, step: int | None = None,
                               bins: int = 60, xlabel: str = "cosine similarity") -> Path:
    """Density histograms of sampled positive and negative pair similarities, with their means."""
    pos, neg = _as_list(pos_sims), _as_list(neg_sims)
    fig = _figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    values = pos + neg
    low, high = (min(values), max(values)) if values else (-1.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    for name, sims, color in (("positive pairs", pos, "tab:green"), ("negative pairs", neg, "tab:red")):
        if sims:
            mean = sum(sims) / len(sims)
            ax.hist(sims, bins=edges, density=True, alpha=0.5, color=color,
                    label=f"{name} (n={len(sims):,} shown, mean {mean:.3f})")
            ax.axvline(mean, color=color, linestyle="--", linewidth=1)
    if values:
        ax.legend(fontsize="small", loc="best")
    ax.set_title("Similarity of positive and negative pairs" + (f" at step {step}" if step is not None else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density (fraction of pairs per unit similarity)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _as_list(values) -> list[float]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().tolist()
    return [float(value) for value in values if math.isfinite(float(value))]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots: path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

"""PNG plots for the run folder (matplotlib's Agg canvas, imported on first use, no pyplot).

`plot_curves` draws the training losses and the evaluation scores against the optimizer step;
`plot_similarity_histograms` overlays the positive and negative similarity distributions.
Both return the path they wrote, ready for `WandbRun.log_images`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

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


def plot_curves(records: Sequence[Mapping], path: str | Path, *, loss_keys: Sequence[str] | None = None,
                accuracy_keys: Sequence[str] | None = None, title: str = "Training run") -> Path:
    """Loss curves (left) and evaluation scores (right) against the optimizer step.

    Default keys: every metric whose name contains "loss"; every metric whose name contains one of
    ACCURACY_WORDS (case-insensitive) and is not a loss. Scores are fractions in [0, 1].
    """
    names = _metric_names(records)
    if loss_keys is None:
        loss_keys = [name for name in names if "loss" in name.lower()]
    if accuracy_keys is None:
        accuracy_keys = [name for name in names if "loss" not in name.lower()
                         and any(word in name.lower() for word in ACCURACY_WORDS)]
    fig = _figure(figsize=(12, 4.5), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2, sharex=True)  # one step axis, even with a single evaluation
    panels = ((loss_ax, loss_keys, "Training losses", "loss value (per sample, unitless)"),
              (acc_ax, accuracy_keys, "Evaluation scores", "score (fraction, 0-1)"))
    for ax, keys, panel_title, ylabel in panels:
        series = _series(records, keys)
        for key, (steps, values) in series.items():
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        if len(series) > 3:  # many series: the legend goes under the panel, clear of the curves
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        elif series:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(panel_title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_similarity_histograms(pos_sims, neg_sims, path: str | Path, *, step: int | None = None,
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

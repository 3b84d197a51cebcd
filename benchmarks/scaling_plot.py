"""The scaling study's figure: loss-layer memory per rank, bytes received per rank per step, and the loss's share
of a step, against the number of ranks, for a few global batches, dmlscale's tiled CLIP against open_clip's
local loss (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

from pathlib import Path

from scaling_formulas import Calibration, comm_bytes, loss_share, memory_bytes

STYLES = {"dmlscale_clip": ("-", "dmlscale tiled CLIP"), "open_clip": ("--", "open_clip local loss")}
ACCELERATOR_BYTES = 80e9


def plot_scaling(path: str | Path, cal: Calibration, *, batches: list[int], ranks: list[int], bytes_per_second: float,
                 latency_seconds: float, speedup: float) -> Path:
    """Write the three-panel PNG to `path` and return it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for color, global_pairs in zip(colors, batches):
        usable = [w for w in ranks if w <= global_pairs]
        for impl, (style, label) in STYLES.items():
            size = f"{global_pairs / 2**20:g}M" if global_pairs >= 2**20 else f"{global_pairs // 1024}k"
            name = f"{label}, N={size}"
            axes[0].plot(usable, [memory_bytes(impl, global_pairs, w, cal) for w in usable], style, color=color,
                         label=name)
            multi = [w for w in usable if w > 1]
            axes[1].plot(multi, [comm_bytes(impl, global_pairs, w, cal.dim, cal.bytes_per_value) for w in multi],
                         style, color=color, label=name)
            axes[2].plot(usable, [100 * loss_share(impl, global_pairs, w, cal, bytes_per_second=bytes_per_second,
                                                   latency_seconds=latency_seconds, speedup=speedup)
                                  for w in usable], style, color=color, label=name)
    axes[0].axhline(ACCELERATOR_BYTES, color="gray", linewidth=0.8)
    axes[0].annotate("80 GB", (ranks[0], ACCELERATOR_BYTES), textcoords="offset points", xytext=(2, 3), color="gray")
    titles = ("loss-layer memory per rank (bytes)", "bytes received per rank per step",
              f"loss share of a step (%), {bytes_per_second / 1e9:g} GB/s per rank")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(0, 100)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"CLIP loss layer, global batch N, N / ranks pairs per rank, D={cal.dim}, fp32 features, "
                 f"tile {cal.tile}", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out

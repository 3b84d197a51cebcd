"""Monitoring: W&B adapter, console progress, metrics JSONL, plots, similarity and system statistics.

Importing this package is light: names load on first use (PEP 562), so `from dmlscale.monitor
import WandbRun` pulls in neither torch nor matplotlib; wandb loads inside `WandbRun` (online and
offline only), matplotlib inside the plot functions, tqdm inside `Progress`. Every writer takes
`rank` and does nothing off rank 0; W&B and the JSONL share one step rule (see `steps.py`).
"""

import importlib

_EXPORTS = {
    "console": ("Progress", "track"),
    "metrics_log": ("MetricsLog", "read_metrics", "read_records"),
    "plots": ("curves_figure", "plot_curves", "plot_similarity_histograms", "run_title"),
    "similarity_stats": ("SimilarityStats", "clip_similarity_stats", "label_similarity_stats"),
    "system_stats": ("StepTimer", "peak_memory_bytes"),
    "wandb_records": ("read_history", "run_log_files"),
    "wandb_run": ("MODES", "WandbRun", "new_run_id"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'dmlscale.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dmlscale.monitor.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

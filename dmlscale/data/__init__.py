"""Data: tar shards (writer, sample sources incl. real handwritten digits) and the WebDataset loader.

Submodules load on first use, so `import dmlscale.data` stays light (no PIL, scikit-learn or
webdataset until needed).
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "write_shards": "dmlscale.data.shards",
    "folder_samples": "dmlscale.data.sources",
    "table_samples": "dmlscale.data.sources",
    "digits_samples": "dmlscale.data.sources",
    "write_digits_shards": "dmlscale.data.sources",
    "DIGIT_CLASSNAMES": "dmlscale.data.sources",
    "TRAIN_CAPTION_TEMPLATES": "dmlscale.data.sources",
    "HELDOUT_TEMPLATES": "dmlscale.data.sources",
    "make_loader": "dmlscale.data.pipeline",
    "Loader": "dmlscale.data.pipeline",
    "BalancedLoader": "dmlscale.data.balanced_loader",
    "DirtyDataError": "dmlscale.data.skip_log",
    "list_shards": "dmlscale.data.shard_list",
    "merge_totals": "dmlscale.data.accounting",
    "check_totals": "dmlscale.data.accounting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dmlscale.data' has no attribute {name!r}")

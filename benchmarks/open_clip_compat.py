"""What the benchmarks need to run open_clip_train 3.3 here, in one place (data_throughput.py and
e2e_vs_openclip.py import it; open_clip_train_entry.py applies it in every process it starts).

- open_clip_train.data imports pandas at the top but its webdataset path never uses it; when pandas is
  not installed an empty placeholder module stands in for it so that the import succeeds.
- open_clip_train 3.3's tarfile_to_samples_nothrow fails with webdataset 1.0.2 (KeyError 'fname':
  webdataset now ends each shard with an empty end-of-shard marker that open_clip's grouping does not
  expect), so that one stage is rebuilt from the same webdataset and open_clip functions with the marker
  switched off (eof_value=None, webdataset's behaviour before 1.0); everything else is open_clip's.
- open_clip_train wraps the model in DistributedDataParallel(model, device_ids=[device]) on every
  device; torch refuses device_ids for a CPU module (ValueError), so on the CPU the entry hands DDP
  device_ids=None, which is what DDP wants there (open_clip_train_entry.py only; same DDP otherwise).
- The dmlscale model configs (dmlscale/configs/models/*.json are open_clip model configs) are added to
  open_clip's registry, so that `--model dml-quickstart-rn` builds the same architecture in both systems.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "dmlscale" / "configs" / "models"


def import_open_clip_data() -> types.ModuleType:
    """open_clip_train.data, importable without pandas and reading webdataset 1.0's shards."""
    if importlib.util.find_spec("pandas") is None:
        placeholder = types.ModuleType("pandas")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = placeholder
    import open_clip_train.data as open_clip_data

    def tarfile_to_samples_without_eof_markers(src, handler=open_clip_data.log_and_continue):
        streams = open_clip_data.url_opener(src, handler=handler)
        files = open_clip_data.tar_file_expander(streams, handler=handler, eof_value=None)
        return open_clip_data.group_by_keys_nothrow(files, handler=handler)

    open_clip_data.tarfile_to_samples_nothrow = tarfile_to_samples_without_eof_markers
    return open_clip_data


def allow_ddp_on_cpu() -> None:
    """torch.nn.parallel.DistributedDataParallel, in this process, drops device_ids that name only CPUs."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel
    if getattr(ddp, "drops_cpu_device_ids", False):
        return

    class CpuTolerantDistributedDataParallel(ddp):
        drops_cpu_device_ids = True

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuTolerantDistributedDataParallel


def register_dmlscale_models() -> None:
    """Add dmlscale's packaged open_clip model configs to open_clip's model registry."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)

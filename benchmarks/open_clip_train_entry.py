"""`python benchmarks/open_clip_train_entry.py ARGS.json` (also under torchrun): open_clip_train.main.main
with the argument list stored in ARGS.json, open_clip_compat applied first in this process (the pandas
placeholder, webdataset 1.0's shards, DDP on the CPU, the dmlscale model configs registered). e2e_vs_openclip.py starts
open_clip_train through it. The arguments travel in a file because torchrun's own parser would take
open_clip_train's `--logs` for an ambiguous abbreviation of its `--logs-specs`."""

from __future__ import annotations

import json
import sys

from open_clip_compat import allow_ddp_on_cpu, import_open_clip_data, register_dmlscale_models


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].endswith(".json"):
        raise SystemExit(f"usage: open_clip_train_entry.py ARGS.json (a JSON list of open_clip_train arguments), "
                         f"got {argv!r}")
    with open(argv[0]) as handle:
        arguments = json.load(handle)
    import_open_clip_data()
    register_dmlscale_models()
    allow_ddp_on_cpu()
    from open_clip_train.main import main as open_clip_train_main

    open_clip_train_main(arguments)


if __name__ == "__main__":
    main(sys.argv[1:])

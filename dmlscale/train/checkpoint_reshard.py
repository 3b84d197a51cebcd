"""Resume a checkpoint at another world size (checkpoint.load with allow_world_size_change=True).

ZeRO stage 0: nothing is partitioned. DeepSpeed's one model file (mp_rank_00_model_states.pt) holds
the module and the whole torch optimizer state, and its load_checkpoint reads only that file, so
every rank of any world size loads it as it is: weights and Adam moments exactly as saved.
ZeRO 1-3: the optimizer state is split into one file per saved rank. Rank 0 converts the checkpoint
with DeepSpeed's universal-checkpoint converter (deepspeed.checkpoint.ds_to_universal) into
run_dir/.universal/<tag>; every rank then loads that with the engine's load_universal_checkpoint
switched on for the call, so DeepSpeed cuts each parameter's fp32 weights and moments for the new
partitioning. The converted folder is removed afterwards.

RNG states: rank r < saved world size restores saved rank r's states; a rank beyond the saved world
size seeds torch, numpy and python from a hash of saved rank 0's torch state and r, so a resumed run
is reproducible but no two ranks share a random stream. The returned state is saved rank 0's (its
data-stream state is the same on every rank).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from dmlscale.distributed.collectives import barrier, broadcast_object, world_rank_and_size
from dmlscale.train.checkpoint_store import read_manifest, saved_state
from dmlscale.train.rng_state import set_rng_states

UNIVERSAL_DIR = ".universal"


def saved_zero_stage(checkpoint_dir: Path) -> int:
    manifest = read_manifest(checkpoint_dir)
    if manifest is not None and isinstance(manifest.get("zero_stage"), int):
        return manifest["zero_stage"]
    if list(checkpoint_dir.glob("zero_pp_rank_*_model_states.pt")):
        return 3
    return 2 if list(checkpoint_dir.glob("*optim_states.pt")) else 0  # 1 and 2 load alike


def _restore_rng(run_dir: Path, tag: str, saved_rank0: dict, rank: int) -> None:
    if rank < saved_rank0["world_size"]:
        state = saved_rank0 if rank == 0 else saved_state(run_dir / tag, rank)
        set_rng_states(state["rng"])
        return
    digest = hashlib.sha256(saved_rank0["rng"]["torch"].numpy().tobytes() + str(rank).encode()).digest()
    seed = int.from_bytes(digest[:8], "little") % 2**63
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _convert_to_universal(run_dir: Path, tag: str) -> Path:
    """Rank 0 writes run_dir/.universal/<tag>; returns run_dir/.universal (collective)."""
    universal_root = run_dir / UNIVERSAL_DIR
    rank = world_rank_and_size()[0]
    error = None
    if rank == 0:
        try:
            import dmlscale.train.deepspeed_quiet  # noqa: F401  (DeepSpeed's start-up lines filtered)
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            shutil.rmtree(universal_root / tag, ignore_errors=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates every stage
                ds_to_universal(argparse.Namespace(
                    input_folder=str(run_dir / tag), output_folder=str(universal_root / tag), num_extract_workers=1,
                    num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True))
        except Exception as exception:  # reported on every rank below
            error = f"{type(exception).__name__}: {exception}"
    error = broadcast_object(error, src=0)
    if error is not None:
        raise ValueError(f"checkpoint {tag!r} in {str(run_dir)!r}: converting it for another world size failed: "
                         f"{error}")
    return universal_root


def load_resharded(engine, run_dir: Path, tag: str, saved_rank0: dict, *, restore_rng: bool = True) -> dict:
    """Load checkpoint `tag`, saved by saved_rank0["world_size"] ranks, into `engine` at this world size."""
    rank = world_rank_and_size()[0]
    stage = saved_zero_stage(run_dir / tag)
    engine_stage = engine.zero_optimization_stage()
    if (stage == 0) != (engine_stage == 0):
        raise ValueError(f"checkpoint {tag!r} was saved at ZeRO stage {stage}; this engine runs stage {engine_stage}: "
                         f"a world-size change needs the same kind (stage 0, or 1-3) on both sides")
    if stage == 0:
        load_path, _ = engine.load_checkpoint(str(run_dir), tag=tag)
    else:
        universal_root = _convert_to_universal(run_dir, tag)
        config = engine._config
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = True
        try:
            load_path, _ = engine.load_checkpoint(str(universal_root), tag=tag)
        finally:
            config.load_universal_checkpoint = before
        barrier()
        if rank == 0:
            shutil.rmtree(universal_root, ignore_errors=True)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {tag!r} from {str(run_dir)!r}")
    if restore_rng:
        _restore_rng(run_dir, tag, saved_rank0, rank)
    return dict(saved_rank0, resharded_from=saved_rank0["world_size"])

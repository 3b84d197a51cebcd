"""Checkpoints: DeepSpeed's sharded save on every rank, our per-rank extra state, an atomic `latest` pointer.

Layout of run_dir:
  step_00000040/            DeepSpeed's files (model, optimizer partitions, scheduler) for that step
  step_00000040/extra_rank00000.pt   per-rank: step, run id, world size, RNG states, the caller's extra dict
  step_00000040/model_spec.json      how to rebuild the model (for export), when the model carries one
  latest                    the tag of the newest complete checkpoint; replaced atomically by rank 0
                            after every rank has finished writing, so a crash never points at a partial one.
ZeRO checkpoints are tied to the world size: loading with another size raises (export is size-free).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def _rank_and_size() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _extra_path(checkpoint_dir: Path, rank: int) -> Path:
    return checkpoint_dir / f"extra_rank{rank:05d}.pt"


def rng_states() -> dict:
    """This process's torch (CPU and CUDA), numpy and python RNG states."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def save(engine, run_dir: str | Path, step: int, extra: dict | None = None, *, run_id: str = "") -> Path:
    """Save the engine at `step` with `extra` (e.g. {"data": stream.state_dict()}); call on every rank.

    Returns the checkpoint directory. The RNG states saved are those at the call, so a resumed run
    continues the same random stream.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint save: step must be an int >= 0, got {step!r}")
    run_dir = Path(run_dir)
    rank, world_size = _rank_and_size()
    tag = tag_for_step(step)
    state = {"step": step, "run_id": run_id, "world_size": world_size, "rng": rng_states(),
             "extra": dict(extra or {})}
    engine.save_checkpoint(str(run_dir), tag=tag, save_latest=False)
    checkpoint_dir = run_dir / tag
    _write_atomically(_extra_path(checkpoint_dir, rank), lambda path: torch.save(state, path))
    spec = getattr(engine.module, "dmlscale_spec", None)
    if rank == 0 and spec is not None:
        _write_atomically(checkpoint_dir / "model_spec.json", lambda path: path.write_text(json.dumps(spec, indent=1)))
    _barrier()  # every rank's files are complete before the pointer moves
    if rank == 0:
        _write_atomically(run_dir / LATEST, lambda path: path.write_text(tag))
    _barrier()
    return checkpoint_dir


def resolve_tag(run_dir: str | Path, tag: str = LATEST) -> str:
    """The checkpoint tag `tag` names: the content of the `latest` pointer, or `tag` itself."""
    run_dir = Path(run_dir)
    if tag == LATEST:
        pointer = run_dir / LATEST
        if not pointer.is_file():
            raise ValueError(f"no checkpoint to resume: {str(pointer)!r} does not exist")
        tag = pointer.read_text().strip()
    if not (run_dir / tag).is_dir():
        raise ValueError(f"checkpoint {tag!r} not found in {str(run_dir)!r}")
    return tag


def load(engine, run_dir: str | Path, tag: str = LATEST, *, restore_rng: bool = True) -> dict:
    """Load the engine (module, optimizer, scheduler) from `tag`; return {"step", "run_id", "extra", ...}.

    Restores this rank's RNG states unless restore_rng=False. Call on every rank.
    """
    run_dir = Path(run_dir)
    tag = resolve_tag(run_dir, tag)
    rank, world_size = _rank_and_size()
    extra_path = _extra_path(run_dir / tag, rank)
    if not extra_path.is_file():
        raise ValueError(f"checkpoint {tag!r} in {str(run_dir)!r} has no state for rank {rank}")
    state = torch.load(extra_path, map_location="cpu", weights_only=False)
    if state["world_size"] != world_size:
        raise ValueError(f"checkpoint {tag!r} was saved by {state['world_size']} ranks; this run has "
                         f"{world_size} (ZeRO checkpoints are tied to the world size; export the weights instead)")
    load_path, _ = engine.load_checkpoint(str(run_dir), tag=tag)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {tag!r} from {str(run_dir)!r}")
    if restore_rng:
        set_rng_states(state["rng"])
    return state

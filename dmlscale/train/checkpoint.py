"""Checkpoints: DeepSpeed's sharded save on every rank, our per-rank extra state, a manifest, an atomic
`latest` pointer, retention, and failures that every rank sees together.

Layout of run_dir:
  step_00000040/            DeepSpeed's files (model, optimizer partitions, scheduler) for that step
  step_00000040/extra_rank00000.pt   per-rank: step, run id, world size, RNG states, the caller's extra dict
  step_00000040/model_spec.json      how to rebuild the model (for export), when the model carries one
  step_00000040/complete.json        the manifest: world size, step, every file with its byte size;
                            written by rank 0 after every rank finished writing
  latest                    the tag of the newest complete checkpoint; moved atomically after the manifest,
                            so a crash never points at a partial one.
ZeRO checkpoints are tied to the world size; `load(..., allow_world_size_change=True)` re-shards
(checkpoint_reshard.py). Export is size-free.

Every collective here runs on every rank in the same order whatever happens locally: a rank that
fails to write keeps going through DeepSpeed's barriers with its failure recorded, and one gather of
the failures makes every rank raise the same CheckpointError.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import torch

from dmlscale.distributed.collectives import all_gather_objects, barrier, world_rank_and_size
from dmlscale.train.checkpoint_reshard import load_resharded
from dmlscale.train.checkpoint_store import (LATEST, MANIFEST, WRITING, checkpoint_bytes, extra_path,
                                             find_resume_tag, newest_complete, prune, read_pointer, saved_state,
                                             tag_for_step, verify, write_atomically, write_manifest,
                                             write_text_durably)
from dmlscale.train.rng_state import rng_states, set_rng_states

__all__ = ["LATEST", "CheckpointError", "NonFiniteWeightsError", "find_resume_tag", "load", "resolve_tag",
           "rng_states", "save", "set_rng_states", "tag_for_step", "verify", "weights_finite"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; raised on every rank, `latest` still names the previous one."""


class NonFiniteWeightsError(CheckpointError):
    """The weights hold NaN or Inf: saving them would make the newest checkpoint useless."""


def _local_tensors(engine) -> list[tuple[str, torch.Tensor]]:
    """This rank's weights: module parameters (ZeRO-3: the local partition) and the optimizer's fp32
    master partitions where DeepSpeed keeps them (ZeRO 1-3, bf16)."""
    tensors = [(name, getattr(p, "ds_tensor", p)) for name, p in engine.module.named_parameters()]
    optimizer = engine.optimizer
    for attribute in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition"):
        for index, tensor in enumerate(getattr(optimizer, attribute, None) or []):
            if isinstance(tensor, torch.Tensor):
                tensors.append((f"{attribute}[{index}]", tensor))
    return tensors


def _non_finite_names(engine) -> list[str]:
    """Collective: 'rank R: name' for every local weight tensor with a NaN or Inf, from all ranks."""
    rank, _ = world_rank_and_size()
    local = [f"rank {rank}: {name}" for name, tensor in _local_tensors(engine)
             if tensor.numel() and not bool(torch.isfinite(tensor.detach()).all())]
    return [name for names in all_gather_objects(local) for name in names]


def weights_finite(engine) -> bool:
    """Collective: True when every rank's parameters (and ZeRO partitions) are finite."""
    return not _non_finite_names(engine)


def _estimated_bytes(engine) -> int:
    """Collective: what a checkpoint of `engine` takes, about: the module's parameters and buffers plus
    the optimizer's state and fp32 master partitions (summed over ranks when ZeRO partitions them)."""
    module_bytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in engine.module.parameters())
    module_bytes += sum(b.numel() * b.element_size() for b in engine.module.buffers())
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    optimizer_bytes = sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
                          if isinstance(t, torch.Tensor))
    partitioned = engine.zero_optimization_stage() > 0
    if partitioned:  # the master partitions are saved in the optimizer files
        optimizer_bytes += sum(p.numel() * p.element_size() for group in inner.param_groups for p in group["params"])
    return module_bytes + (sum(all_gather_objects(optimizer_bytes)) if partitioned else optimizer_bytes)


def _free_bytes(run_dir: Path) -> int:
    try:
        return shutil.disk_usage(run_dir).free
    except OSError:
        return -1


def _space_message(tag: str, path: str, needed: int, free: int, run_dir: Path, cause: str, *, no_space: bool) -> str:
    what = "no space left on device" if no_space else "write failed"
    return (f"checkpoint {tag!r}: {what} writing {path!r}: the checkpoint needs about {needed} bytes "
            f"({needed / 2**20:.1f} MiB), {free} bytes ({free / 2**20:.1f} MiB) were free on {str(run_dir)!r} "
            f"before writing ({cause}); 'latest' still names the previous checkpoint")


class _RecordingCheckpointEngine:
    """Delegates to DeepSpeed's checkpoint engine; a failed write (OSError, torch's zip-writer
    RuntimeError) is recorded instead of raised, so this rank still reaches DeepSpeed's barriers."""

    def __init__(self, inner):
        self._inner = inner
        self.failure: tuple[str, BaseException] | None = None

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def save(self, state_dict, path: str):
        if self.failure is not None:
            return None
        try:
            return self._inner.save(state_dict, path)
        except (OSError, RuntimeError) as error:
            self.failure = (str(path), error)
            return None


def _describe_failure(tag: str, path: str, error: BaseException, needed: int, free: int, run_dir: Path) -> str:
    no_space = getattr(error, "errno", None) == errno.ENOSPC
    if not no_space and isinstance(error, RuntimeError):  # torch's zip writer hides ENOSPC ("unexpected pos")
        no_space = 0 <= _free_bytes(run_dir) < max(needed // 100, 1 << 20)
    return _space_message(tag, path, needed, free, run_dir, f"{type(error).__name__}: {error}", no_space=no_space)


def _preflight(run_dir: Path, tag: str, needed: int) -> tuple[str | None, int]:
    """(error, free bytes): free space and a creatable run folder, before DeepSpeed writes (its first
    barrier follows a mkdir that would otherwise fail on rank 0 alone)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(run_dir).free
    except OSError as error:
        return _space_message(tag, str(run_dir), needed, -1, run_dir, f"{type(error).__name__}: {error}",
                              no_space=error.errno == errno.ENOSPC), -1
    if free < needed:
        return _space_message(tag, str(run_dir / tag), needed, free, run_dir, "checked before writing",
                              no_space=True), free
    return None, free


def _prepare_folder(run_dir: Path, tag: str, rank: int) -> str | None:
    checkpoint_dir = run_dir / tag
    try:
        if rank == 0:
            checkpoint_dir.mkdir(exist_ok=True)
            (checkpoint_dir / WRITING).write_text("")
            (checkpoint_dir / MANIFEST).unlink(missing_ok=True)  # a re-save of this tag is incomplete until done
        return None
    except OSError as error:
        return f"checkpoint {tag!r}: cannot prepare {str(checkpoint_dir)!r}: {type(error).__name__}: {error}"


def _discard(run_dir: Path, tag: str, rank: int) -> None:
    """Remove every file of a failed save; rank 0 points `latest` at the newest complete checkpoint
    if it named this tag (a failed re-save of the same step)."""
    shutil.rmtree(run_dir / tag, ignore_errors=True)
    barrier()
    if rank == 0:
        shutil.rmtree(run_dir / tag, ignore_errors=True)
        if read_pointer(run_dir) == tag:
            previous = newest_complete(run_dir, excluding=tag)
            if previous is None:
                (run_dir / LATEST).unlink(missing_ok=True)
            else:
                write_text_durably(run_dir / LATEST, previous)
    barrier()


def _fail_together(errors: list, run_dir: Path, tag: str, rank: int, *, discard: bool) -> None:
    failures = [error for error in errors if error]
    if not failures:
        return
    if discard:
        _discard(run_dir, tag, rank)
    raise CheckpointError(failures[0] + (f" (and {len(failures) - 1} more ranks failed)" if len(failures) > 1 else ""))


def save(engine, run_dir: str | Path, step: int, extra: dict | None = None, *, run_id: str = "",
         keep_last: int = 0, keep_every: int = 0) -> Path:
    """Save the engine at `step` with `extra` (e.g. {"data": stream.state_dict()}); call on every rank.

    Refuses non-finite weights (NonFiniteWeightsError, nothing written) and a checkpoint that does
    not fit (CheckpointError before writing, estimated from the previous complete checkpoint or the
    engine's sizes). A write failure on any rank raises CheckpointError on every rank, naming the
    path, the bytes needed and free; that tag's files are removed and `latest` stays on the previous
    checkpoint. After success, keeps the keep_last newest checkpoints (0: all) and those whose step
    is a multiple of keep_every. Returns the checkpoint directory. The RNG states saved are those at
    the call, so a resumed run continues the same random stream.
    """
    for name, value, minimum in (("step", step, 0), ("keep_last", keep_last, 0), ("keep_every", keep_every, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"checkpoint save: {name} must be an int >= {minimum}, got {value!r}")
    run_dir = Path(run_dir)
    rank, world_size = world_rank_and_size()
    tag = tag_for_step(step)
    checkpoint_dir = run_dir / tag

    bad = _non_finite_names(engine)
    if bad:
        raise NonFiniteWeightsError(f"checkpoint {tag!r} in {str(run_dir)!r} not written: non-finite weights in "
                                    f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    estimate = _estimated_bytes(engine)
    previous = read_pointer(run_dir)
    previous_bytes = checkpoint_bytes(run_dir / previous) if previous and (run_dir / previous).is_dir() else 0
    needed = previous_bytes or estimate
    problem, free = _preflight(run_dir, tag, needed)
    _fail_together(all_gather_objects(problem), run_dir, tag, rank, discard=False)
    _fail_together(all_gather_objects(_prepare_folder(run_dir, tag, rank)), run_dir, tag, rank, discard=True)

    state = {"step": step, "run_id": run_id, "world_size": world_size, "rng": rng_states(),
             "extra": dict(extra or {})}
    recorder = _RecordingCheckpointEngine(engine.checkpoint_engine)
    engine.checkpoint_engine = recorder
    failure = None
    try:
        engine.save_checkpoint(str(run_dir), tag=tag, save_latest=False)
    except (OSError, RuntimeError) as error:
        # Only rank 0's copy of DeepSpeed's recovery scripts writes outside the checkpoint engine; it runs
        # after every collective but DeepSpeed's final barrier, which this rank still has to join.
        failure = (getattr(error, "filename", None) or str(run_dir), error)
        barrier()
    finally:
        engine.checkpoint_engine = recorder._inner
    failure = recorder.failure or failure
    if failure is None:
        try:
            write_atomically(extra_path(checkpoint_dir, rank), lambda path: torch.save(state, path))
            spec = getattr(engine.module, "dmlscale_spec", None)
            if rank == 0 and spec is not None:
                write_atomically(checkpoint_dir / "model_spec.json",
                                 lambda path: path.write_text(json.dumps(spec, indent=1)))
        except (OSError, RuntimeError) as error:
            failure = (str(extra_path(checkpoint_dir, rank)), error)
    message = None if failure is None else _describe_failure(tag, failure[0], failure[1], needed, free, run_dir)
    _fail_together(all_gather_objects(message), run_dir, tag, rank, discard=True)

    outcome = None
    if rank == 0:  # every rank's files are complete: manifest, then the pointer, then retention
        try:
            write_manifest(checkpoint_dir, step=step, world_size=world_size,
                           zero_stage=engine.zero_optimization_stage(), run_id=run_id)
            (checkpoint_dir / WRITING).unlink()
            write_text_durably(run_dir / LATEST, tag)
        except OSError as error:
            outcome = _describe_failure(tag, str(checkpoint_dir / MANIFEST), error, needed, free, run_dir)
        if outcome is None:
            prune(run_dir, step, keep_last=keep_last, keep_every=keep_every)
    _fail_together(all_gather_objects(outcome), run_dir, tag, rank, discard=True)
    return checkpoint_dir


def resolve_tag(run_dir: str | Path, tag: str = LATEST) -> str:
    """The checkpoint tag `tag` names: the content of the `latest` pointer, or `tag` itself (no verification;
    resuming uses find_resume_tag)."""
    run_dir = Path(run_dir)
    if tag == LATEST:
        pointer = run_dir / LATEST
        if not pointer.is_file():
            raise ValueError(f"no checkpoint to resume: {str(pointer)!r} does not exist")
        tag = pointer.read_text().strip()
    if not (run_dir / tag).is_dir():
        raise ValueError(f"checkpoint {tag!r} not found in {str(run_dir)!r}")
    return tag


def load(engine, run_dir: str | Path, tag: str = LATEST, *, restore_rng: bool = True,
         allow_world_size_change: bool = False) -> dict:
    """Load the engine (module, optimizer, scheduler) from `tag` (resolved and verified by
    find_resume_tag); return {"step", "run_id", "world_size", "extra", "rng", "tag"}. Call on every rank.

    At the saved world size, returns this rank's state and restores its RNG states (restore_rng).
    At another world size, raises unless allow_world_size_change; then re-shards the model and
    optimizer state (see checkpoint_reshard.load_resharded) and returns saved rank 0's state.
    """
    run_dir = Path(run_dir)
    resolved = find_resume_tag(run_dir, tag)
    if resolved is None:
        raise ValueError(f"no checkpoint to resume in {str(run_dir)!r}: it has no step_* folder")
    rank, world_size = world_rank_and_size()
    saved_rank0 = saved_state(run_dir / resolved, 0)
    saved_world_size = saved_rank0["world_size"]
    if saved_world_size != world_size:
        if not allow_world_size_change:
            raise ValueError(f"checkpoint {resolved!r} was saved by {saved_world_size} ranks; this run has "
                             f"{world_size} (ZeRO checkpoints are tied to the world size; pass "
                             f"allow_world_size_change=True to re-shard, or export the weights)")
        state = load_resharded(engine, run_dir, resolved, saved_rank0, restore_rng=restore_rng)
        return {**state, "tag": resolved}
    state = saved_rank0 if rank == 0 else saved_state(run_dir / resolved, rank)
    load_path, _ = engine.load_checkpoint(str(run_dir), tag=resolved)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {resolved!r} from {str(run_dir)!r}")
    if restore_rng:
        set_rng_states(state["rng"])
    return {**state, "tag": resolved}


def saved_extra(run_dir: str | Path, tag: str, rank: int) -> dict:
    """The extra dict saved rank `rank` wrote into checkpoint `tag` (e.g. its block of a sharded loss)."""
    return saved_state(Path(run_dir) / tag, rank)["extra"]

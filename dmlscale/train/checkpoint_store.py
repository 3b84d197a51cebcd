"""The checkpoint folders on disk: manifests, verification, choosing where to resume, retention.

Nothing here talks to other ranks; `checkpoint.py` calls these from rank 0 (manifest, pointer,
pruning) or from every rank (verification on resume).

A checkpoint folder is complete when its manifest (MANIFEST, written by rank 0 after every rank
finished writing) lists every file with its byte size and the files are there with those sizes.
Folders written before manifests existed are accepted leniently (see `verify`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import torch

LATEST = "latest"
MANIFEST = "complete.json"
WRITING = ".writing"  # rank 0 puts it in a tag folder before the first byte and removes it with the manifest
STEP_FOLDER = re.compile(r"step_(\d+)")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def extra_path(checkpoint_dir: Path, rank: int) -> Path:
    return checkpoint_dir / f"extra_rank{rank:05d}.pt"


def saved_state(checkpoint_dir: Path, rank: int) -> dict:
    """What saved rank `rank` wrote beside DeepSpeed's files: step, run id, world size, RNG states, extra."""
    return torch.load(extra_path(checkpoint_dir, rank), map_location="cpu", weights_only=False)


def write_atomically(path: Path, write) -> None:
    """write(temporary) then rename over `path`: readers see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_durably(path: Path, text: str) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    write_atomically(path, write)


def step_folders(run_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every step_* folder in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = STEP_FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path.name))
    return sorted(found)


def read_pointer(run_dir: Path) -> str | None:
    pointer = run_dir / LATEST
    try:
        return pointer.read_text().strip() or None
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None


def folder_files(checkpoint_dir: Path) -> dict[str, int]:
    """Every file under checkpoint_dir (relative path -> bytes), without the manifest and the marker."""
    files = {}
    for path in sorted(checkpoint_dir.rglob("*")):
        name = path.relative_to(checkpoint_dir).as_posix()
        if path.is_file() and name not in (MANIFEST, WRITING):
            files[name] = path.stat().st_size
    return files


def write_manifest(checkpoint_dir: Path, *, step: int, world_size: int, zero_stage: int, run_id: str) -> None:
    manifest = {"format": 1, "step": step, "world_size": world_size, "zero_stage": zero_stage, "run_id": run_id,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": folder_files(checkpoint_dir)}
    write_text_durably(checkpoint_dir / MANIFEST, json.dumps(manifest, indent=1))


def read_manifest(checkpoint_dir: Path) -> dict | None:
    """The manifest, None when there is none; ValueError when it is unreadable."""
    path = checkpoint_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("world_size"), int):
            raise ValueError("no 'files' or 'world_size'")
        return manifest
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"its manifest {str(path)!r} is unreadable ({error})") from None


def checkpoint_bytes(checkpoint_dir: Path) -> int:
    """The bytes a checkpoint folder takes: its manifest's total, else the files there."""
    try:
        manifest = read_manifest(checkpoint_dir)
    except ValueError:
        manifest = None
    files = manifest["files"] if manifest else folder_files(checkpoint_dir)
    return sum(files.values())


def _check_extras(checkpoint_dir: Path, world_size: int) -> str | None:
    for rank in range(world_size):
        path = extra_path(checkpoint_dir, rank)
        if not path.is_file():
            return f"rank {rank}'s state {path.name} is missing (saved by {world_size} ranks)"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any unpickling failure means the file is unusable
            return f"{path.name} does not load ({type(error).__name__}: {error})"
        if not isinstance(state, dict) or state.get("world_size") != world_size:
            return f"{path.name} does not hold the state of a {world_size}-rank save"
    return None


def verify(run_dir: str | Path, tag: str) -> str | None:
    """None when checkpoint `tag` of run_dir is complete and loadable, else why not.

    Complete: the manifest is there, every file it lists has its recorded size, and there is one
    extra_rank file per rank of the saved world size, each of which torch.load reads.
    Lenient for folders written before manifests existed: without a manifest (and without the
    in-progress marker of an unfinished save) a folder counts as complete when every rank's extra
    file loads and DeepSpeed's model states are there, since the extra files were written only after
    DeepSpeed's save had returned on every rank.
    """
    checkpoint_dir = Path(run_dir) / tag
    if not checkpoint_dir.is_dir():
        return f"the folder {str(checkpoint_dir)!r} does not exist"
    try:
        manifest = read_manifest(checkpoint_dir)
    except ValueError as error:
        return str(error)
    if manifest is None:
        if (checkpoint_dir / WRITING).exists():
            return "its save never finished (no manifest, in-progress marker present)"
        first = extra_path(checkpoint_dir, 0)
        try:
            world_size = saved_state(checkpoint_dir, 0)["world_size"]
        except Exception as error:  # missing or unreadable: no way to know the world size
            return f"no manifest, and {first.name} does not load ({type(error).__name__})"
        if not list(checkpoint_dir.glob("*model_states.pt")):
            return "no manifest, and no DeepSpeed model states"
        return _check_extras(checkpoint_dir, world_size)
    for name, size in manifest["files"].items():
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    return _check_extras(checkpoint_dir, manifest["world_size"])


def find_resume_tag(run_dir: str | Path, requested: str = LATEST) -> str | None:
    """The checkpoint tag to resume from, verified.

    requested="latest": the pointer's tag if it verifies; else (pointer missing, corrupt or naming an
    incomplete checkpoint) the newest step_* folder that verifies, with a warning saying what was
    wrong. None only when run_dir has no step_* folder at all (a first start). When there are step_*
    folders but none verifies, ValueError naming each and why: never a fresh start that would
    overwrite existing checkpoints. An explicit tag must verify, else ValueError.
    """
    run_dir = Path(run_dir)
    if requested != LATEST:
        reason = verify(run_dir, requested)
        if reason is not None:
            raise ValueError(f"checkpoint {requested!r} in {str(run_dir)!r} cannot be resumed: {reason}")
        return requested
    pointed = read_pointer(run_dir)
    if pointed is not None:
        reason = verify(run_dir, pointed)
        if reason is None:
            return pointed
        problem = f"'latest' names {pointed!r}, which is not usable: {reason}"
    else:
        problem = f"the 'latest' pointer {str(run_dir / LATEST)!r} is missing, empty or unreadable"
    rejected = []
    for _, tag in reversed(step_folders(run_dir)):
        if tag == pointed:
            continue
        reason = verify(run_dir, tag)
        if reason is None:
            skipped = "".join(f"; skipped {t}: {r}" for t, r in rejected)
            warnings.warn(f"resume in {str(run_dir)!r}: {problem}; resuming from {tag!r}, the newest complete "
                          f"checkpoint{skipped}", stacklevel=2)
            return tag
        rejected.append((tag, reason))
    if pointed is not None and (run_dir / pointed).is_dir():
        rejected.insert(0, (pointed, problem))
    if not rejected:
        return None
    details = "; ".join(f"{tag}: {reason}" for tag, reason in rejected)
    raise ValueError(f"no complete checkpoint to resume in {str(run_dir)!r} ({problem}): {details}. "
                     f"Repair or remove these folders; a fresh start would overwrite them")


def is_complete_enough_to_keep(run_dir: Path, tag: str) -> bool:
    """Cheap completeness for retention: a manifest, or an old-style folder with rank 0's extra file."""
    checkpoint_dir = run_dir / tag
    if (checkpoint_dir / MANIFEST).is_file():
        return True
    return not (checkpoint_dir / WRITING).exists() and extra_path(checkpoint_dir, 0).is_file()


def prune(run_dir: Path, current_step: int, *, keep_last: int, keep_every: int) -> list[str]:
    """Remove step_* folders retention does not keep; returns the removed tags.

    Kept: the keep_last newest complete checkpoints up to current_step (0: all), every one whose
    step is a multiple of keep_every (> 0), the one `latest` names, and any folder with a step
    beyond current_step (another branch of the run, left alone). Incomplete folders older than
    current_step (crashed saves) are removed.
    """
    if keep_last == 0:
        return []
    pointed = read_pointer(run_dir)
    candidates = [(step, tag) for step, tag in step_folders(run_dir) if step <= current_step]
    complete = [(step, tag) for step, tag in candidates if is_complete_enough_to_keep(run_dir, tag)]
    keep = {tag for _, tag in complete[-keep_last:]} | {pointed}
    if keep_every > 0:
        keep |= {tag for step, tag in complete if step % keep_every == 0}
    removed = []
    for step, tag in candidates:
        if tag in keep:
            continue
        try:
            shutil.rmtree(run_dir / tag)
            removed.append(tag)
        except OSError as error:
            warnings.warn(f"checkpoint retention: could not remove {str(run_dir / tag)!r}: {error}", stacklevel=2)
    return removed


def newest_complete(run_dir: Path, *, excluding: str | None = None) -> str | None:
    for _, tag in reversed(step_folders(run_dir)):
        if tag != excluding and verify(run_dir, tag) is None:
            return tag
    return None

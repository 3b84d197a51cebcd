"""What may change between a checkpoint and the run that resumes it.

The config a checkpoint was trained with travels in its extra state. On resume the new config is
compared key by key, before anything in the run folder is written:
- APPLIED keys (learning rate and schedule length) take effect from the step of resume, and the
  trainer says so;
- FREE keys (evaluation, logging, checkpointing, monitoring, fault limits, threads, loader workers)
  do not change what is trained;
- LAYOUT keys (per-rank batch size, loader workers) and the world size re-plan the rest of the epoch;
- every other change (model, loss, seed, data, optimizer betas, ...) is refused by name, since the
  resumed run would silently be another experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

APPLIED = ("optim.lr", "optim.warmup_steps", "optim.min_lr_ratio", "train.steps")
LAYOUT = ("data.batch_size", "data.num_workers")
FREE_PREFIXES = ("eval.", "monitor.", "checkpoint.", "faults.")
FREE = ("name", "run_dir", "train.log_every", "train.stop_at", "train.threads", "train.max_nonfinite_steps",
        "train.ledger", "train.group_timeout_s", "data.eval_batch_size", "data.eval_shards", "data.max_skip_fraction",
        "data.skip_check_after", "data.max_repeat_fraction", "data.missing_shards")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and tuples compare as lists."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


@dataclass
class ResumeChanges:
    applied: dict[str, tuple]  # key -> (saved, new), applied from the step of resume
    relayout: dict[str, tuple]  # layout keys (and "world_size") that re-plan the rest of the epoch
    free: dict[str, tuple]

    def describe(self) -> list[str]:
        lines = [f"{key} changed from {old!r} to {new!r}: applied from this step on"
                 for key, (old, new) in self.applied.items()]
        lines += [f"{key} changed from {old!r} to {new!r}: model, optimizer and the rest of the epoch are re-planned"
                  for key, (old, new) in self.relayout.items()]
        return lines


def compare(saved: dict, new: dict, *, saved_world_size: int, world_size: int, tag: str) -> ResumeChanges:
    """Classify the differences between the checkpoint's config and the new one; ValueError naming every
    refused key with both values."""
    old_flat, new_flat = flatten(saved), flatten(new)
    changes = ResumeChanges({}, {}, {})
    refused = []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key), new_flat.get(key)
        if old == value:
            continue
        if key in APPLIED:
            changes.applied[key] = (old, value)
        elif key in LAYOUT:
            changes.relayout[key] = (old, value)
        elif key in FREE or key.startswith(FREE_PREFIXES):
            changes.free[key] = (old, value)
        else:
            refused.append(f"{key} (checkpoint: {old!r}, now: {value!r})")
    if saved_world_size != world_size:
        changes.relayout["world_size"] = (saved_world_size, world_size)
    if refused:
        allowed = ", ".join(APPLIED + LAYOUT) + ", world size, and evaluation/monitoring/checkpoint settings"
        raise ValueError(f"cannot resume checkpoint {tag!r}: {'; '.join(refused)} changed since it was saved. "
                         f"Only {allowed} may change on resume; start a new run (another name or run_dir) instead")
    return changes

"""Append-only metrics JSONL in the run folder: one line per log call, `{"step", "time", "metrics"}`.

Resuming opens the same file and continues it. Steps follow the W&B adapter's rule (StepGuard):
a step at or below the last step already in the file is dropped (one warning), so a resumed run
never writes a step twice; within one session the current step may repeat (train, then eval
metrics of the same step) as separate lines, which `read_metrics` merges.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

from dmlscale.monitor.steps import StepGuard, plain_value


def _json_value(value):
    """A JSON-safe value: numbers stay numbers, NaN/inf become strings ("nan", "inf", "-inf")."""
    value = plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_records(path: str | Path) -> list[dict]:
    """Every record of a metrics JSONL, in file order; a torn last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {number + 1} is not JSON: {line[:80]!r}") from None
    return records


def read_metrics(path: str | Path) -> list[dict]:
    """One dict per step (`{"step": s, name: value, ...}`), the lines of each step merged, by step."""
    by_step: dict[int, dict] = {}
    for record in read_records(path):
        by_step.setdefault(record["step"], {"step": record["step"]}).update(record["metrics"])
    return [by_step[step] for step in sorted(by_step)]


class MetricsLog:
    """Appends metric records to `path` (created with its folder); rank != 0 writes nothing."""

    def __init__(self, path: str | Path, *, rank: int = 0, resume_step: int | None = None) -> None:
        """`resume_step`: the step a resumed session continues from; records after it (written by a session
        that died before its next checkpoint) are removed, since the resumed session trains those steps again."""
        self.path, self.active = Path(path), rank == 0
        floor = None
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_tail()
            if resume_step is not None:
                self._drop_after(resume_step)
            steps = [record["step"] for record in read_records(self.path)]
            floor = max(steps) if steps else None
        self._steps = StepGuard("MetricsLog", floor)

    def _drop_torn_tail(self) -> None:
        """Cut a partial last line (no newline) left by a crash, so the next record starts clean."""
        if self.path.exists():
            text = self.path.read_bytes()
            if text and not text.endswith(b"\n"):
                self.path.write_bytes(text[: text.rfind(b"\n") + 1])

    def _drop_after(self, step: int) -> None:
        records = read_records(self.path)
        kept = [record for record in records if record["step"] <= step]
        if len(kept) < len(records):
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
            temporary.replace(self.path)

    @property
    def num_dropped(self) -> int:
        """How many log calls were dropped because their step went back."""
        return self._steps.num_dropped

    def log(self, metrics: Mapping[str, object], step: int) -> bool:
        """Append one record; False (with a warning) when the step goes back and is dropped."""
        if not self._steps.accept(step):
            return False
        if self.active:
            record = {"step": step, "time": time.time(),
                      "metrics": {key: _json_value(value) for key, value in metrics.items()}}
            with self.path.open("a") as file:
                file.write(json.dumps(record) + "\n")
        return True

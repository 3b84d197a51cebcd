"""The sample ledger: which samples every optimizer step trained on, per rank, and a reader that checks it.

With train.ledger=true each rank appends one JSON line per step to run_dir/ledger/rank<r>.jsonl:
{"session": S, "step": s, "epoch": e, "rank": r, "applied": bool, "keys": [sample keys]}. S is the start
time of the session (rank 0's clock, the same on every rank), so a session that resumed from a
checkpoint at step c and re-trained steps c+1.. supersedes the lines an earlier, interrupted session
wrote for those steps: those are replays, not new samples. A line cut by a kill is ignored. The cost
is one buffered line per step (keys only), cheap enough to leave on.

`check_ledger(run_dir)` keeps, for every step, the lines of the newest session that logged it, and
reports per epoch how many samples were trained, how many of them distinct, and which keys were
trained more than once; steps whose update was skipped (non-finite) count as not trained.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

LEDGER_DIR = "ledger"


class Ledger:
    """Appends this rank's lines; flushed at every step so that a kill loses at most the line in flight."""

    def __init__(self, run_dir: str | Path, *, rank: int, session: float):
        folder = Path(run_dir) / LEDGER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.rank, self.session = rank, session
        path = folder / f"rank{rank:05d}.jsonl"
        if path.exists():  # cut the line a kill left unfinished, so that this session's first line starts clean
            text = path.read_bytes()
            if text and not text.endswith(b"\n"):
                path.write_bytes(text[: text.rfind(b"\n") + 1])
        self._file = open(path, "a")

    def record(self, step: int, epoch: int, keys: list[str], *, applied: bool = True) -> None:
        line = {"session": self.session, "step": step, "epoch": epoch, "rank": self.rank, "applied": applied,
                "keys": list(keys)}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class EpochReport:
    epoch: int
    num_steps: int = 0
    num_trained: int = 0  # sample slots trained (a repeat counts each time)
    num_distinct: int = 0
    repeated: dict[str, int] = field(default_factory=dict)  # key -> times trained, for keys trained > once
    num_skipped_steps: int = 0  # steps whose update was skipped (their samples count as not trained)
    keys: set[str] = field(default_factory=set)


@dataclass
class LedgerReport:
    epochs: dict[int, EpochReport]
    num_replayed_lines: int  # lines superseded by a later session (steps re-trained after a resume)
    num_sessions: int
    steps: list[int]  # every step that the final record covers, in order
    ranks_per_step: dict[int, int]

    @property
    def exactly_once(self) -> bool:
        return all(not report.repeated for report in self.epochs.values())


def read_lines(run_dir: str | Path) -> list[dict]:
    """Every complete line of every rank's ledger file."""
    lines = []
    for path in sorted((Path(run_dir) / LEDGER_DIR).glob("rank*.jsonl")):
        for text in path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue  # the line a kill cut short
    return lines


def check_ledger(run_dir: str | Path) -> LedgerReport:
    """Per-epoch accounting of the final record (see the module docstring)."""
    lines = read_lines(run_dir)
    if not lines:
        raise ValueError(f"no ledger in {str(Path(run_dir) / LEDGER_DIR)!r} (train.ledger=true writes one)")
    newest = {}
    for line in lines:
        newest[line["step"]] = max(newest.get(line["step"], line["session"]), line["session"])
    final = [line for line in lines if line["session"] == newest[line["step"]]]
    epochs: dict[int, EpochReport] = {}
    counts: dict[int, Counter] = defaultdict(Counter)
    steps_per_epoch: dict[int, set] = defaultdict(set)
    ranks_per_step: Counter = Counter()
    skipped_steps: dict[int, set] = defaultdict(set)
    for line in final:
        report = epochs.setdefault(line["epoch"], EpochReport(line["epoch"]))
        steps_per_epoch[line["epoch"]].add(line["step"])
        ranks_per_step[line["step"]] += 1
        if not line["applied"]:
            skipped_steps[line["epoch"]].add(line["step"])
            continue
        counts[line["epoch"]].update(line["keys"])
    for epoch, report in epochs.items():
        counter = counts[epoch]
        report.num_steps = len(steps_per_epoch[epoch])
        report.num_skipped_steps = len(skipped_steps[epoch])
        report.num_trained = sum(counter.values())
        report.num_distinct = len(counter)
        report.keys = set(counter)
        report.repeated = {key: n for key, n in counter.items() if n > 1}
    return LedgerReport(epochs=dict(sorted(epochs.items())), num_replayed_lines=len(lines) - len(final),
                        num_sessions=len({line["session"] for line in lines}), steps=sorted(newest),
                        ranks_per_step=dict(ranks_per_step))

"""Where a data stream stands: enough to resume exactly in the middle of an epoch, at any layout.

Because every slot's sample order is a pure function of (seed, epoch, rank, worker) and the shard
list, the position is just (epoch, batches consumed this epoch) plus the layout that consumed them.
The state is the same on every rank, so the trainer may store rank 0's copy. Seed, mode and the shard
fingerprint must match for any resume. The same layout resumes bitwise; another world size, worker
count or batch size (epoch mode) closes the saved segment and reads the rest of the epoch once
(segments.py): `segments` lists the epoch's earlier, closed segments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from dmlscale.data.segments import SEGMENT_FIELDS, check_segment

# fields that must match for any resume
FIXED_FIELDS = ("mode", "seed", "shards")
# fields of the layout: a change starts a new segment of the epoch (epoch mode only)
LAYOUT_FIELDS = ("world_size", "num_workers", "batch_size")


@dataclass
class StreamState:
    epoch: int
    batches_consumed: int  # batches of the current segment of `epoch` already handed to the trainer
    mode: str
    seed: int
    world_size: int
    num_workers: int
    batch_size: int
    num_batches: int  # per rank in the current segment of `epoch` (the whole epoch unless resumed elsewhere)
    shards: str  # fingerprint of shard names and sizes
    segments: list[dict] = dataclasses.field(default_factory=list)  # earlier segments of `epoch`

    def as_dict(self) -> dict:
        return asdict(self)

    def current_segment(self) -> dict:
        return {name: getattr(self, name) for name in SEGMENT_FIELDS}

    def check(self, saved: dict) -> dict:
        """The checked fields of `saved` (a state_dict()); ValueError naming the first that cannot be
        resumed here. Returns {"epoch", "batches_consumed", "num_batches", "segments", "same_layout"}:
        with another layout, the saved segment is appended to the segments and nothing of the new one
        is consumed yet."""
        if not isinstance(saved, dict):
            raise ValueError(f"load_state_dict expects a dict from state_dict(), got {type(saved).__name__}")
        missing = [name for name in (*FIXED_FIELDS, *SEGMENT_FIELDS, "epoch") if name not in saved]
        if missing:
            raise ValueError(f"data stream state lacks {missing}; got keys {sorted(saved)}")
        for name in FIXED_FIELDS:
            if saved[name] != getattr(self, name):
                raise ValueError(f"cannot resume the data stream: saved {name}={saved[name]!r} but this loader has "
                                 f"{name}={getattr(self, name)!r}")
        epoch = saved["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"data stream state: epoch must be an int >= 0, got {epoch!r}")
        segments = saved.get("segments", [])
        if not isinstance(segments, list):
            raise ValueError(f"data stream state: segments must be a list, got {segments!r:.80}")
        segments = [check_segment(segment, index) for index, segment in enumerate(segments)]
        current = check_segment({name: saved[name] for name in SEGMENT_FIELDS}, len(segments))
        same_layout = all(saved[name] == getattr(self, name) for name in LAYOUT_FIELDS)
        if not same_layout and self.mode != "epoch":
            changed = next(name for name in LAYOUT_FIELDS if saved[name] != getattr(self, name))
            raise ValueError(f"cannot resume the data stream: saved {changed}={saved[changed]!r} but this loader has "
                             f"{changed}={getattr(self, changed)!r}; mode={self.mode!r} resumes only at the same "
                             f"layout (mode='epoch' can change it)")
        if same_layout:
            return {"epoch": epoch, "batches_consumed": current["batches_consumed"],
                    "num_batches": current["num_batches"], "segments": segments, "same_layout": True}
        return {"epoch": epoch, "batches_consumed": 0, "num_batches": None, "segments": [*segments, current],
                "same_layout": False}

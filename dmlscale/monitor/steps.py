"""Step bookkeeping shared by the W&B adapter and the metrics JSONL, so both apply one rule.

Rule: a step below the last step logged in this session, or at or below the last step an earlier
session of the same run wrote, is dropped (W&B itself drops such steps online); the first drop
warns, later ones are counted in `num_dropped`.
Repeating the current step is allowed (train and eval metrics of one step).
"""

from __future__ import annotations

import warnings


def check_step(owner: str, step: object) -> int:
    """Return `step`; raise unless it is an int >= 0 (bools rejected)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{owner}: step must be an int >= 0, got {step!r}")
    return step


class StepGuard:
    """Monotonic-step bookkeeping shared by the W&B adapter and the metrics JSONL.

    `floor`: the last step an earlier session wrote (None: a fresh run); steps must exceed it.
    Within the session a step may repeat but never go back.
    """

    def __init__(self, owner: str, floor: int | None = None) -> None:
        self.owner, self.floor, self.last = owner, floor, None
        self.num_dropped = 0

    def accept(self, step: int) -> bool:
        """True when `step` may be logged (and record it); False when it goes back. The first drop
        warns (a resumed run replays the steps after its checkpoint: one warning, not one per step)."""
        check_step(self.owner, step)
        too_low = (self.floor is not None and step <= self.floor) or (self.last is not None and step < self.last)
        if too_low:
            if self.num_dropped == 0:
                bound = self.last if self.last is not None else self.floor
                warnings.warn(f"{self.owner}: dropped step {step}: steps must not go back (last logged: {bound}); "
                              "later drops are only counted (num_dropped)", stacklevel=3)
            self.num_dropped += 1
            return False
        self.last = step
        return True


def plain_value(value: object) -> object:
    """Numbers and 0-dim tensors/arrays as Python numbers; anything else unchanged."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value

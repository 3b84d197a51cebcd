"""Step heartbeats in the rendezvous store, so that a collective that timed out can name the stalled rank.

Each rank publishes its step (one `store.set` per step: `beat/<rank>` = "<step> <unix time>"). When a
collective raises a timeout, the rank marks itself as waiting (`waiting/<rank>`), gives the other live
ranks a moment to do the same (they time out in the same collective at about the same time), then reads
every rank's beat: ranks that did not mark themselves waiting are the stalled (stopped, dead, or stuck
elsewhere) ones. Reads go through a fresh store client with its own timeout, since the store's server may
live in the stalled process itself (rank 0 outside torchrun).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch.distributed as dist

from dmlscale.distributed.formation import FormedGroup, current_group

BEAT_KEY, WAITING_KEY = "beat/", "waiting/"


class StepHeartbeat:
    """One rank's heartbeat; `stalled_ranks_message` is for the error of a timed-out collective."""

    def __init__(self, group: FormedGroup, *, clock: Callable[[], float] = time.time) -> None:
        self.group, self.rank, self.world_size = group, group.rank, group.world_size
        self.last_step: int | None = None
        self._clock = clock

    @classmethod
    def for_current_group(cls) -> "StepHeartbeat | None":
        """The heartbeat of the group `init_process_group` formed; None in a single process."""
        group = current_group()
        return None if group is None else cls(group)

    def beat(self, step: int) -> None:
        """Publish that this rank reached `step` (cheap: one store round trip)."""
        self.last_step = step
        self.group.store.set(f"{BEAT_KEY}{self.rank}", f"{step} {self._clock():.3f}")

    def stalled_ranks_message(self, timeout_s: float = 10.0) -> str:
        """Which ranks are behind, e.g. "rank 1 last reached step 12, 305 s ago; ranks 0 at step 13
        (waiting in the collective)". Waits up to half of `timeout_s` for the other ranks' waiting marks;
        every store access is bounded by `timeout_s`. Never raises: a store that cannot be read is said so."""
        try:
            store = self.group.open_store(timeout_s)
            store.set(f"{WAITING_KEY}{self.rank}", f"{self.last_step} {self._clock():.3f}")
            until = time.monotonic() + timeout_s / 2
            while time.monotonic() < until and not store.check(
                    [f"{WAITING_KEY}{r}" for r in range(self.world_size)]):
                time.sleep(0.1)
            beats = {r: _read(store, f"{BEAT_KEY}{r}") for r in range(self.world_size)}
            waiting = {r for r in range(self.world_size) if store.check([f"{WAITING_KEY}{r}"])}
        except (RuntimeError, dist.DistError) as error:
            return f"could not read the heartbeats from the store at {self.group.address}: {error}"
        return describe_beats(beats, waiting, now=self._clock())


def _read(store: dist.Store, key: str) -> tuple[int, float] | None:
    if not store.check([key]):
        return None
    step, at = store.get(key).decode().split()
    return int(step), float(at)


def describe_beats(beats: dict[int, tuple[int, float] | None], waiting: set[int], *, now: float) -> str:
    """The message from each rank's (step, time) beat and the set of ranks waiting in the collective.
    Suspects: ranks not waiting; if every rank is waiting, those behind the furthest step; if all are at
    the same step, the one(s) with the oldest beat."""
    ranks = sorted(beats)
    suspects = [r for r in ranks if r not in waiting]
    if not suspects:
        steps = {r: beats[r][0] if beats[r] else -1 for r in ranks}
        suspects = [r for r in ranks if steps[r] < max(steps.values())]
        if not suspects:
            oldest = min(beats[r][1] if beats[r] else float("-inf") for r in ranks)
            suspects = [r for r in ranks if (beats[r][1] if beats[r] else float("-inf")) == oldest]
    parts = []
    for r in suspects:
        if beats[r] is None:
            parts.append(f"rank {r} never reported a step")
        else:
            parts.append(f"rank {r} last reached step {beats[r][0]}, {now - beats[r][1]:.0f} s ago")
    others = [r for r in ranks if r not in suspects]
    if others:
        by_step: dict[str, list[int]] = {}
        for r in others:
            by_step.setdefault("no step yet" if beats[r] is None else f"step {beats[r][0]}", []).append(r)
        state = " (waiting in the collective)" if all(r in waiting for r in others) else ""
        parts.append(", ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} at {where}"
                               for where, rs in by_step.items()) + state)
    return "; ".join(parts)

"""Where a data stream stands: enough to resume exactly in the middle of an epoch.

Because every slot's sample order is a pure function of (seed, epoch, rank, worker) and the shard
list, the position is just (epoch, batches consumed this epoch). The state is the same on every
rank, so the trainer may store rank 0's copy. The layout fields (world size, workers, batch size,
shards) are stored to refuse a resume that could not be exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# fields that must match for a resume to be exact
LAYOUT_FIELDS = ("mode", "seed", "world_size", "num_workers", "batch_size", "num_batches", "shards")


@dataclass
class StreamState:
    epoch: int
    batches_consumed: int  # batches of `epoch` already handed to the trainer
    mode: str
    seed: int
    world_size: int
    num_workers: int
    batch_size: int
    num_batches: int  # per rank per epoch
    shards: str  # fingerprint of shard names and sizes

    def as_dict(self) -> dict:
        return asdict(self)

    def check_resumable(self, saved: dict) -> tuple[int, int]:
        """(epoch, batches_consumed) of `saved`; ValueError naming the first field that differs."""
        if not isinstance(saved, dict):
            raise ValueError(f"load_state_dict expects a dict from state_dict(), got {type(saved).__name__}")
        missing = [name for name in (*LAYOUT_FIELDS, "epoch", "batches_consumed") if name not in saved]
        if missing:
            raise ValueError(f"data stream state lacks {missing}; got keys {sorted(saved)}")
        for name in LAYOUT_FIELDS:
            if saved[name] != getattr(self, name):
                raise ValueError(f"cannot resume the data stream exactly: saved {name}={saved[name]!r} but this "
                                 f"loader has {name}={getattr(self, name)!r}")
        epoch, consumed = saved["epoch"], saved["batches_consumed"]
        for name, value in (("epoch", epoch), ("batches_consumed", consumed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"data stream state: {name} must be an int >= 0, got {value!r}")
        if consumed > self.num_batches:
            raise ValueError(f"data stream state: batches_consumed={consumed} exceeds num_batches={self.num_batches}")
        return epoch, consumed

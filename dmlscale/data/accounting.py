"""Data totals summed over ranks, and the one check of bad-data limits that holds at any world size.

A totals dict (Loader.totals(), or the sum of several) counts, over a loader's whole life:

    seen          samples read and decoded (good or bad; a resume replay is not counted again)
    skipped       of those, unusable ones;  seen - skipped = samples handed to training
    repeats       of those handed out, refill samples the epoch may already have given (plan.py)
    by_reason     {reason: skipped samples}
    by_shard      {shard path: skipped samples}
    size_mismatch {shard path: [listed in sizes.json, actually in the tar]}

Pure functions, no communication: the trainer gathers each rank's totals and calls `check_totals` on
`merge_totals` of them, so a half-broken shard stops a 1-rank run and an 8-rank run alike, with the
same message, and every rank raises together instead of one rank leaving the others in a collective.
"""

from __future__ import annotations

from collections import Counter

from dmlscale.data.skip_log import DirtyDataError

COUNTS = ("seen", "skipped", "repeats")
TALLIES = ("by_reason", "by_shard")
WORST_SHARDS = 10


def empty_totals() -> dict:
    return {"seen": 0, "skipped": 0, "repeats": 0, "by_reason": {}, "by_shard": {}, "size_mismatch": {}}


def _check_totals_dict(totals, where: str) -> None:
    if not isinstance(totals, dict):
        raise ValueError(f"{where} must be a totals dict (Loader.totals()), got {type(totals).__name__}: "
                         f"{totals!r:.80}")
    missing = [key for key in (*COUNTS, *TALLIES, "size_mismatch") if key not in totals]
    if missing:
        raise ValueError(f"{where} lacks {missing}; got keys {sorted(totals)}")
    for key in COUNTS:
        value = totals[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}[{key!r}] must be an int >= 0, got {value!r}")
    for key in (*TALLIES, "size_mismatch"):
        if not isinstance(totals[key], dict):
            raise ValueError(f"{where}[{key!r}] must be a dict, got {totals[key]!r:.80}")


def merge_totals(totals: list[dict]) -> dict:
    """The sum of several totals (ranks, workers, sessions); size mismatches are united by shard."""
    if not isinstance(totals, (list, tuple)):
        raise ValueError(f"merge_totals expects a list of totals dicts, got {type(totals).__name__}")
    merged = empty_totals()
    tallies = {key: Counter() for key in TALLIES}
    for index, one in enumerate(totals):
        _check_totals_dict(one, f"totals[{index}]")
        for key in COUNTS:
            merged[key] += one[key]
        for key in TALLIES:
            tallies[key].update(one[key])
        for path, counts in one["size_mismatch"].items():
            merged["size_mismatch"].setdefault(path, list(counts))
    for key in TALLIES:
        merged[key] = dict(tallies[key])
    return merged


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"check_totals: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _worst_shards(totals: dict) -> str:
    worst = Counter(totals["by_shard"]).most_common(WORST_SHARDS)
    text = ", ".join(f"{path} ({count})" for path, count in worst) or "none"
    if len(totals["by_shard"]) > WORST_SHARDS:
        text += f" and {len(totals['by_shard']) - WORST_SHARDS} more"
    return text


def _mismatches(totals: dict) -> str:
    if not totals["size_mismatch"]:
        return ""
    items = sorted(totals["size_mismatch"].items())
    listed = ", ".join(f"{path} (lists {counts[0]}, holds {counts[1]})" for path, counts in items[:WORST_SHARDS])
    return f"; sizes.json disagrees with the tar for: {listed}"


def check_totals(totals: dict, *, max_skip_fraction: float, skip_check_after: int,
                 max_repeat_fraction: float) -> None:
    """Raise DirtyDataError when, once `skip_check_after` samples were seen, more than
    max_skip_fraction of them were skipped, or more than max_repeat_fraction of the trained samples
    (seen - skipped) were repeats. The message names the reasons and the shards with the most skips."""
    _check_totals_dict(totals, "check_totals: totals")
    max_skip_fraction = _fraction("max_skip_fraction", max_skip_fraction)
    max_repeat_fraction = _fraction("max_repeat_fraction", max_repeat_fraction)
    if isinstance(skip_check_after, bool) or not isinstance(skip_check_after, int) or skip_check_after < 1:
        raise ValueError(f"check_totals: skip_check_after must be an int >= 1, got {skip_check_after!r}")
    seen, skipped, repeats = totals["seen"], totals["skipped"], totals["repeats"]
    if seen < skip_check_after:
        return
    reasons = ", ".join(f"{name}: {count}" for name, count in sorted(totals["by_reason"].items())) or "none"
    if skipped > max_skip_fraction * seen:
        raise DirtyDataError(
            f"bad data: {skipped} of {seen} samples read were skipped ({skipped / seen:.1%} > "
            f"data.max_skip_fraction={max_skip_fraction}) over all ranks and epochs; reasons: {reasons}; "
            f"shards with skips: {_worst_shards(totals)}{_mismatches(totals)}; fix or drop those shards, or allow "
            f"more with data.max_skip_fraction")
    trained = seen - skipped
    if trained > 0 and repeats > max_repeat_fraction * trained:
        raise DirtyDataError(
            f"bad data: {repeats} of {trained} trained samples were repeats ({repeats / trained:.1%} > "
            f"data.max_repeat_fraction={max_repeat_fraction}) over all ranks and epochs: refill made up for "
            f"{skipped} skipped samples ({reasons}) from shards: {_worst_shards(totals)}{_mismatches(totals)}; fix or "
            f"drop those shards, or allow more with data.max_repeat_fraction")

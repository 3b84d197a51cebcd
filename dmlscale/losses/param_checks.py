"""Constructor-argument checks shared by the loss classes: each raises a ValueError naming the
loss, the argument and the offending value."""

from __future__ import annotations

import math


def check_real(owner: str, name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """Return `value` as a float; raise unless it is a finite real number (>= minimum, or > when strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite real number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{owner}: {name} must be {relation} {minimum}, got {value!r}")
    return float(value)


def check_positive_int(owner: str, name: str, value) -> int:
    """Return `value`; raise unless it is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value

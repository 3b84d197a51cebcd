"""Constructor-argument checks shared by losses and miners: the one home of the number checks.

Each raises a ValueError of the form "<Owner>: <argument> must be <what is allowed>, got <value!r>",
so the message names the class, the argument and the offending value. Bools are never numbers here.
"""

from __future__ import annotations

import math
import numbers


def describe_real(*, minimum: float | None, strict: bool, finite: bool) -> str:
    """What check_real accepts, in words ("a positive number", "a finite real number >= 0", ...)."""
    if minimum == 0 and strict:
        return "a finite positive number" if finite else "a positive number"
    what = "a finite real number" if finite else "a real number"
    if minimum is None:
        return what
    return f"{what} {'>' if strict else '>='} {minimum}"


def check_real(owner: str, name: str, value: object, *, minimum: float | None = None, strict: bool = False,
               finite: bool = True) -> float:
    """Return `value` as a float; raise unless it is a real number (finite unless finite=False),
    >= minimum (> when strict). NaN never satisfies a minimum."""
    is_real = not isinstance(value, bool) and isinstance(value, numbers.Real)
    ok = (
        is_real
        and (not finite or math.isfinite(value))
        and (minimum is None or (value > minimum if strict else value >= minimum))
    )
    if not ok:
        raise ValueError(
            f"{owner}: {name} must be {describe_real(minimum=minimum, strict=strict, finite=finite)}, got {value!r}"
        )
    return float(value)


def check_positive(owner: str, name: str, value: object) -> float:
    """Return `value` as a float; raise unless it is a number > 0 (infinity allowed, NaN not)."""
    return check_real(owner, name, value, minimum=0, strict=True, finite=False)


def check_positive_int(owner: str, name: str, value: object, *, alternatives: tuple = ()) -> int:
    """Return `value`; raise unless it is an int >= 1 (bools rejected) or one of `alternatives`
    (such as "all")."""
    if alternatives and value in alternatives:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "".join(f"{alt!r} or " for alt in alternatives)
        raise ValueError(f"{owner}: {name} must be {allowed}a positive int, got {value!r}")
    return value


def check_real_range(owner: str, name: str, value: object) -> tuple[float, float] | None:
    """Return `value`; raise unless it is None or a (low, high) pair of real numbers with low <= high."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: {name} must be None or a (low, high) pair, got {value!r}")
    for position, bound in enumerate(value):
        check_real(owner, f"{name}[{position}]", bound, finite=False)
    if value[0] > value[1]:
        raise ValueError(f"{owner}: {name} must have low <= high, got {value!r}")
    return value

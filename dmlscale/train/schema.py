"""Typed config sections: dataclass fields are coerced and type-checked from their annotations, and
YAML mappings and `key=value` overrides become nested sections, every error naming the dotted key.

Lossless conversions only: int -> float, YAML 1.1's '1e-3' str -> float, list -> tuple, mapping ->
section. Everything else that does not match the annotation raises ValueError("<key> must be <what the
annotation allows>, got <value>").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal

import yaml


def _describe(hint) -> str:
    """What a type hint allows, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if origin is list:
        return "a list of " + {str: "strings", int: "ints", float: "numbers"}.get(args[0], _describe(args[0]))
    if hint is type(None):
        return "null"
    if hint is dict or origin is dict:
        return "a mapping with string keys"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(hint)]}"
    return {int: "an int", float: "a number", bool: "true or false", str: "a string"}[hint]


def _coerce(hint, value, key: str):
    """`value` converted to `hint` where that is lossless (int -> float, YAML's '1e-3' str -> float,
    list -> tuple, mapping -> section); raise ValueError naming `key` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(option, value, key)
            except ValueError:
                if dataclasses.is_dataclass(option) and isinstance(value, dict):
                    raise  # a mapping meant for this section: its own error names the key
                continue
    elif hint is dict or origin is dict:
        if isinstance(value, dict) and all(isinstance(name, str) for name in value):
            return dict(value)
    elif origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)) and (origin is list or len(value) == len(args)):
            item_hints = args if origin is tuple else args * len(value)
            items = [_coerce(h, v, f"{key}[{i}]") for i, (h, v) in enumerate(zip(item_hints, value))]
            return tuple(items) if origin is tuple else items
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return section_from_dict(hint, value, prefix=f"{key}.")
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"{key} must be {_describe(hint)}, got {value!r}")


class Section:
    """Base of every config section: coerces and type-checks its fields, then calls `check()`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            setattr(self, field.name, _coerce(hints[field.name], getattr(self, field.name), field.name))
        self.check()

    def check(self) -> None:
        """Range and combination checks of this section; raise ValueError naming the field."""

    def _require(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")


def section_from_dict(cls, data: dict, *, prefix: str = ""):
    """Build section `cls` from a mapping; unknown keys and every field error name the dotted key."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]!s}: unknown config key (value {data[unknown[0]]!r}); "
                         f"allowed keys {'under ' + prefix.rstrip('.') if prefix else 'at the top level'}: {names}")
    try:
        return cls(**data)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(prefix) or not prefix else prefix + message) from None


def parse_override(text: str) -> tuple[str, object]:
    """'train.steps=5' -> ('train.steps', 5): the value is read as YAML ('null', '[0.9, 0.95]', 'true'); the
    schema then converts where lossless (YAML 1.1 reads '3e-4' as a str, which a float field accepts)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} must look like key=value with a dotted key, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw  # an unparsable value is a string; the schema decides whether that is allowed
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with each `key=value` set; unknown keys are reported by the schema."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        key, value = parse_override(text)
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data

"""Losses, miners, reducers and distances by class name, built with constructor options checked against the
class's signature, so a recipe can name any of them: `{"name": "MultiSimilarityLoss", "options": {"alpha": 2}}`.

A class takes the options of its own `__init__` and, where that `__init__` passes `**kwargs` on, those of its
bases (PML's `distance=`, `reducer=`, `collect_stats=`). An option `distance`, `reducer` or `default_reducer`
may itself be a component spec, and `reducers` a mapping of them (MultipleReducers); so may the loss wrappers'
`loss` (SelfSupervisedLoss) and `losses` / `miners` (MultipleLosses: a mapping or a list of specs, None for a
loss without a miner). Classes whose name starts
with `Base` or `Generic` are templates to subclass (as in PML) and are not offered.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Mapping

import torch

from dmlscale import distances, losses, miners

KINDS = ("loss", "miner", "reducer", "distance")
NESTED_KINDS = {"distance": "distance", "reducer": "reducer", "default_reducer": "reducer", "loss": "loss"}
NESTED_COLLECTIONS = {"reducers": "reducer", "losses": "loss", "miners": "miner"}  # mappings or lists of specs
IMAGE_TEXT_LOSSES = ("ClipLoss", "SigLipLoss")  # take (image, text) embeddings, not (embeddings, labels)
VIEW_PAIR_LOSSES = ("SelfSupervisedLoss",)  # take (embeddings, ref_emb) augmentation pairs, not (embeddings, labels)
# loss.sharded=true: the class-weight loss and its class-sharded twin in dmlscale.distributed
SHARDED_LOSSES = {name: f"Sharded{name}" for name in (
    "ArcFaceLoss", "CosFaceLoss", "NormalizedSoftmaxLoss", "SubCenterArcFaceLoss", "LargeMarginSoftmaxLoss",
    "SphereFaceLoss", "ProxyAnchorLoss", "ProxyNCALoss", "SoftTripleLoss")}
SHARDED_SET_BY_TRAINER = ("data_parallel", "init_seed", "group")  # options of the sharded class the trainer sets


def sharded_class(name: str, *, key: str) -> type:
    """The class-sharded twin of loss `name` (dmlscale.distributed imports lazily: it loads the collectives)."""
    if name not in SHARDED_LOSSES:
        raise ValueError(f"{key}=true needs one of {sorted(SHARDED_LOSSES)} as loss.name, got {name!r}")
    import dmlscale.distributed

    return getattr(dmlscale.distributed, SHARDED_LOSSES[name])


def _exported(module, base: type) -> dict[str, type]:
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    found = {}
    for name in names:
        value = getattr(module, name)
        if inspect.isclass(value) and issubclass(value, base) and not name.startswith(("Base", "Generic")):
            found[name] = value
    return found


def component_classes(kind: str) -> dict[str, type]:
    """Every class of `kind` ("loss", "miner", "reducer" or "distance") a recipe may name, by class name."""
    if kind == "loss":
        found = _exported(losses, torch.nn.Module)
        # the trainer feeds (embeddings, labels): losses that take no labels (VICRegLoss, ManifoldLoss) are not offered
        return {name: cls for name, cls in found.items()
                if name not in component_classes("reducer") and getattr(cls, "takes_labels", True)}
    if kind == "miner":
        return _exported(miners, miners.BaseMiner)
    if kind == "reducer":
        return _exported(losses, losses.BaseReducer)
    if kind == "distance":
        return _exported(distances, distances.BaseDistance)
    raise ValueError(f"component kind must be one of {list(KINDS)}, got {kind!r}")


def accepted_options(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword options `cls(...)` accepts: its `__init__`'s, then its bases' while each passes **kwargs on."""
    options: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is torch.nn.Module or klass is object:
            break
        params = list(inspect.signature(init).parameters.values())[1:]
        for param in params:
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                options.setdefault(param.name, param)
        if not any(param.kind is param.VAR_KEYWORD for param in params):
            break
    return options


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_class(kind: str, name: object, *, key: str) -> type:
    """The class of `kind` called `name`; ValueError naming `key`, the value and the allowed names."""
    classes = component_classes(kind)
    if not isinstance(name, str) or name not in classes:
        hint = _suggest(name, classes) if isinstance(name, str) else ""
        raise ValueError(f"{key}={name!r} is not a dmlscale {kind}{hint}; allowed: {sorted(classes)}")
    return classes[name]


def check_options(cls: type, options: Mapping, *, key: str, provided: tuple[str, ...] = ()) -> None:
    """ValueError naming `key.<option>` for an option `cls` does not take, or a required one missing
    (`provided`: options the caller fills in itself)."""
    if not isinstance(options, Mapping) or not all(isinstance(name, str) for name in options):
        raise ValueError(f"{key} must be a mapping of option names to values, got {options!r}")
    accepted = accepted_options(cls)
    for name in options:
        if name not in accepted:
            raise ValueError(f"{key}.{name}: {cls.__name__} takes no option {name!r}{_suggest(name, accepted)}; "
                             f"its options: {sorted(accepted)}")
    for name, value in options.items():
        expected = _annotation(cls, name)
        if expected is not None and not _fits(expected, value):
            raise ValueError(f"{key}.{name} must be {_words(expected)} for {cls.__name__}, got {value!r}")
    missing = [name for name, param in accepted.items()
               if param.default is param.empty and name not in options and name not in provided]
    if missing:
        raise ValueError(f"{key}.{missing[0]}: {cls.__name__} needs this option (it has no default)")


def _annotation(cls: type, option: str):
    """The type hint of `option` in the first `__init__` along the MRO that names it (None: unknown)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and option in inspect.signature(init).parameters:
            try:
                return typing.get_type_hints(init).get(option)
            except (NameError, TypeError):
                return None
    return None


def _fits(hint, value) -> bool:
    """Whether `value` fits a plain hint (numbers, bool, str, None, their unions and Literals); other hints
    are left to the class's own checks."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(option, value) for option in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return not _is_plain(hint)


def _is_plain(hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_is_plain(option) for option in typing.get_args(hint))
    return origin is typing.Literal or hint in (float, int, bool, str, type(None))


def _words(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_words(option) for option in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {float: "a number", int: "an int", bool: "true or false", str: "a string", type(None): "null"}.get(
        hint, str(hint))


def split_spec(spec: object, *, key: str) -> tuple[object, dict]:
    """(name, options) of a component spec: a class name, or a mapping {name, options}."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"name", "options"})
        if unknown or "name" not in spec:
            raise ValueError(f"{key} must be a class name or a mapping with keys 'name' and 'options', got {spec!r}")
        return spec["name"], dict(spec.get("options") or {})
    raise ValueError(f"{key} must be a class name or a mapping with keys 'name' and 'options', got {spec!r}")


def build_component(kind: str, spec: object, *, key: str, context: Mapping | None = None) -> torch.nn.Module:
    """Build the component `spec` names. `context` fills options the class takes but `spec` leaves out (the
    trainer passes the model's `embedding_size`). Every error is a ValueError naming `key`."""
    name, options = split_spec(spec, key=key)
    cls = resolve_class(kind, name, key=f"{key}.name" if isinstance(spec, Mapping) else key)
    options_key = f"{key}.options"
    accepted = accepted_options(cls)
    filled = {name: value for name, value in (context or {}).items() if name in accepted and name not in options}
    check_options(cls, options, key=options_key, provided=tuple(filled))
    built = dict(filled)
    for option, value in options.items():
        nested_kind = NESTED_KINDS.get(option)
        if nested_kind is not None and isinstance(value, (str, Mapping)):
            value = build_component(nested_kind, value, key=f"{options_key}.{option}",
                                    context=context if nested_kind == "loss" else None)
        elif option in NESTED_COLLECTIONS and isinstance(value, (Mapping, list, tuple)):
            value = _build_collection(NESTED_COLLECTIONS[option], value, key=f"{options_key}.{option}",
                                      context=context)
        built[option] = value
    try:
        return cls(**built)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{options_key}: {cls.__name__}({_describe(options)}) failed: {error}") from None


def _build_collection(kind: str, specs: Mapping | list | tuple, *, key: str,
                      context: Mapping | None = None) -> dict | list:
    """A mapping or list of component specs built one by one (`key.<name>` / `key[<i>]` in errors); a None
    entry (a loss without a miner) and an already built module stay as they are. Nested losses get the
    `context` (a proxy loss's `embedding_size`)."""
    def one(spec: object, where: str) -> object:
        if spec is None or isinstance(spec, torch.nn.Module):
            return spec
        return build_component(kind, spec, key=where, context=context if kind == "loss" else None)

    if isinstance(specs, Mapping):
        return {name: one(spec, f"{key}.{name}") for name, spec in specs.items()}
    return [one(spec, f"{key}[{i}]") for i, spec in enumerate(specs)]


def _describe(options: Mapping) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in options.items())

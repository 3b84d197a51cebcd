"""Argument checks shared by the samplers: integer labels and integer settings.

Each raises a ValueError "<Owner>: <argument> must be <what is allowed>, got <value>". PML accepts any
hashable label and turns settings into ints with int(); dmlscale wants integer labels (a numpy or torch
array, or a list) and integer settings, so a float label or a fractional m is caught at construction.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch


def check_int(owner: str, name: str, value: object, *, minimum: int) -> int:
    """Return `value` as an int; raise unless it is an integer (bools rejected) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    return int(value)


def integer_labels(owner: str, labels: object, *, ndim: int) -> np.ndarray:
    """`labels` (a torch tensor, numpy array or sequence) as an int64 numpy array of `ndim` dimensions;
    raise unless it holds integers in that shape and is not empty."""
    if isinstance(labels, torch.Tensor):
        array = labels.detach().cpu().numpy()
    elif isinstance(labels, (np.ndarray, Sequence)) and not isinstance(labels, (str, bytes)):
        array = np.asarray(labels)
    else:
        raise ValueError(f"{owner}: labels must be a torch tensor, numpy array or list of ints, "
                         f"got {type(labels).__name__}")
    shape = "1-D" if ndim == 1 else f"{ndim}-D"
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{owner}: labels must be {shape} integers, got dtype {array.dtype} ({_preview(array)})")
    if array.ndim != ndim:
        raise ValueError(f"{owner}: labels must be {shape} integers, got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{owner}: labels must not be empty, got shape {tuple(array.shape)}")
    return array.astype(np.int64)


def _preview(array: np.ndarray) -> str:
    flat = array.reshape(-1)[:4].tolist()
    return ", ".join(repr(v) for v in flat) + (", ..." if array.size > 4 else "")

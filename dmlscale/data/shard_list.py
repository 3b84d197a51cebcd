"""Shard lists: brace-expanded patterns, weighted sources and per-shard sample counts.

Rank balance needs the sample count of every shard on every rank before the first read, so each
shard's count comes from the `sizes.json` beside it (written by `dmlscale shards` and img2dataset's
tools); shards it does not list are counted by scanning their tar headers, with a warning, since that
costs one pass over the headers of those shards on every rank.

A listed shard that is absent, or a file that is not a tar (tarfile.is_tarfile: one header read), is a
ValueError naming it, or with missing_shards="skip" a shard whose every listed sample is read back as
a skip ("missing shard" / "not a tar"), so the run's skip fraction accounts for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from braceexpand import braceexpand

from dmlscale.data.tar_reader import count_samples

LOG = logging.getLogger("dmlscale.data")
SIZES_FILE = "sizes.json"
MISSING_SHARD, NOT_A_TAR = "missing shard", "not a tar"
MISSING_SHARDS = ("error", "skip")

# what list_shards accepts: a pattern ("a/{0..9}.tar::b.tar"), or a list of patterns or of (pattern, weight)
ShardSources: TypeAlias = (
    str | os.PathLike[str] | Sequence[str | os.PathLike[str] | tuple[str | os.PathLike[str], float]]
)


@dataclass(frozen=True)
class Shard:
    path: str
    num_samples: int
    source: int  # index of the source it came from
    problem: str | None = None  # MISSING_SHARD or NOT_A_TAR: every sample is a skip (missing_shards="skip")


@dataclass(frozen=True)
class ShardSet:
    """Every shard of every source, in the order given, with each source's weight."""

    shards: tuple[Shard, ...]
    weights: tuple[float, ...]
    counted: tuple[str, ...]  # shards whose size was counted because no sizes.json listed them

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def fingerprint(self) -> str:
        """A short digest of shard names and sizes: resuming on a different shard list is refused."""
        text = "\n".join(f"{os.path.basename(s.path)}:{s.num_samples}:{s.source}" for s in self.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_sources(sources: ShardSources) -> list[tuple[list[str], float]]:
    """[(patterns, weight), ...] from "a/{0..9}.tar::b/{0..3}.tar" (open_clip's '::' list), a list of
    such strings, or a list of (pattern, weight) pairs. Weights default to 1."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    if not isinstance(sources, Sequence) or not sources:
        raise ValueError(f"sources must be a shard pattern, a list of patterns or of (pattern, weight), "
                         f"got {sources!r}")
    parsed = []
    for item in sources:
        weight = 1.0
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"a weighted source must be a (pattern, weight) pair, got {item!r}")
            item, weight = item
            is_number = not isinstance(weight, bool) and isinstance(weight, (int, float))
            if not is_number or not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"source weight must be a finite positive number, got {weight!r} for {item!r}")
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise ValueError(f"a source must be a non-empty shard pattern, got {item!r}")
        for part in os.fspath(item).split("::"):
            if not part:
                raise ValueError(f"empty pattern in source {item!r}")
            parsed.append((list(braceexpand(part)), float(weight)))
    return parsed


def read_sizes(folder: str) -> dict:
    """The {file name: samples} of `folder`'s sizes.json ({} without one); ValueError when unreadable."""
    return _sizes_for_folder(folder, {})


def _sizes_for_folder(folder: str, cache: dict) -> dict:
    if folder not in cache:
        path = os.path.join(folder, SIZES_FILE)
        sizes = {}
        if os.path.exists(path):
            with open(path) as handle:
                try:
                    sizes = json.load(handle)
                except ValueError as error:
                    raise ValueError(f"{path} is not valid JSON: {error}") from error
            if not isinstance(sizes, dict):
                raise ValueError(f"{path} must map shard file names to sample counts, got {type(sizes).__name__}")
        cache[folder] = sizes
    return cache[folder]


def check_missing_shards(value: object) -> str:
    if value not in MISSING_SHARDS:
        raise ValueError(f"missing_shards must be one of {MISSING_SHARDS}, got {value!r}")
    return value


def list_shards(sources: ShardSources, *, missing_shards: str = "error") -> ShardSet:
    """Expand `sources` into shards with sample counts; a missing file or one that is not a tar raises
    ValueError, or with missing_shards="skip" becomes a shard of skips (see the module docstring)."""
    check_missing_shards(missing_shards)
    shards, counted, cache, unusable = [], [], {}, []
    parsed = parse_sources(sources)
    for source_index, (paths, _) in enumerate(parsed):
        for path in paths:
            problem = None
            if not os.path.isfile(path):
                problem = MISSING_SHARD
            elif not tarfile.is_tarfile(path):
                problem = NOT_A_TAR
            if problem is not None and missing_shards == "error":
                what = "does not exist (local shard files only)" if problem == MISSING_SHARD else "is not a tar file"
                raise ValueError(f"shard {path!r} {what}; fix the shard list or set missing_shards='skip' to "
                                 f"count its samples as skipped")
            sizes = _sizes_for_folder(os.path.dirname(os.path.abspath(path)), cache)
            size = sizes.get(os.path.basename(path))
            if size is None:
                size = 0 if problem is not None else count_samples(path)
                if problem is None:
                    counted.append(path)
            elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"sizes.json gives {size!r} samples for {path!r}; expected an int >= 0")
            if problem is not None:
                unusable.append(f"{path} ({problem}, {size} listed samples)")
            shards.append(Shard(path, size, source_index, problem))
    if counted:
        LOG.warning("no sizes.json entry for %d of %d shards (e.g. %s): counted their samples by reading tar "
                    "headers", len(counted), len(shards), counted[0])
    if unusable:
        LOG.warning("%d of %d shards are unusable, their listed samples count as skipped: %s", len(unusable),
                    len(shards), "; ".join(unusable[:10]))
    return ShardSet(tuple(shards), tuple(weight for _, weight in parsed), tuple(counted))

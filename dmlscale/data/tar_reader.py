"""Read img2dataset-style tar shards sample by sample, by position, without ever raising on bad data.

A sample is a run of consecutive members sharing a key (the member name up to the first dot of its
base name); its position is its index among such runs in the tar, the same count that sizes.json
gives. Samples never span two tars: members of one key split across a tar boundary give two
incomplete samples, both skipped, instead of one silently merged sample. A key seen twice in one tar,
or a field repeated within a sample, marks the sample as a duplicate. A tar that ends early (or cannot
be read at all) yields a "truncated tar" problem for every planned position it no longer holds, and
for its last sample read (a tar ends quietly on a cut header, so that sample may be incomplete).
Headers are read by tar_headers.py; positions before `start` cost a header read each.
A reader given the shard's listed size also reports when the tar disagrees with it: it ends before
`stop`, or a read up to the listed size finds one more key after it (sizes.json under-counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dmlscale.data.tar_headers import iter_members

TRUNCATED = "truncated tar"
DUPLICATE = "duplicate key"
_READ_ERRORS = (EOFError, OSError, ValueError)  # TarReadError is a ValueError


@dataclass
class RawSample:
    """One sample as stored: its fields' bytes by lower-cased extension, or the problem that spoils it."""

    shard: int  # index into the ShardSet
    index: int  # position in the tar
    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None
    repeat: bool = False  # a refill sample this or another slot may already have handed out this epoch


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, or None for names without an extension."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None
    return name[:dot], name[dot + 1:].lower()


def _members(handle) -> Iterator[tuple[str, int, int]]:
    """(name, size, data offset) of the regular files whose names have an extension."""
    for name, size, offset in iter_members(handle):
        if split_name(name) is not None:
            yield name, size, offset


def read_samples(path: str, shard: int, start: int, stop: int, *, listed: int | None = None,
                 on_size_mismatch: Callable[[], None] | None = None) -> Iterator[RawSample]:
    """Yield the samples at positions start..stop-1 of the tar at `path`, in order, exactly
    stop - start of them: missing positions come back with problem TRUNCATED.

    `on_size_mismatch()` is called (at most once) when the tar ends before `stop`, or when `stop` is
    the `listed` size and the tar holds a further sample."""
    position, current, seen_keys = -1, None, set()
    report = on_size_mismatch or (lambda: None)
    try:
        with open(path, "rb") as handle:
            for name, size, offset in _members(handle):
                key, extension = split_name(name)
                if current is None or key != current.key:
                    if current is not None and position >= start:
                        yield current
                    position += 1
                    if position >= stop:
                        if stop == listed:
                            report()
                        return
                    current = RawSample(shard, position, key)
                    if key in seen_keys:
                        current.problem = DUPLICATE
                    seen_keys.add(key)
                if position < start or current.problem is not None:
                    continue
                if extension in current.fields:
                    current.problem = DUPLICATE
                    current.fields = {}
                    continue
                handle.seek(offset)
                current.fields[extension] = handle.read(size)
                if len(current.fields[extension]) != size:
                    raise EOFError(f"short read of {name}")
    except _READ_ERRORS:
        if current is not None:
            current.problem, current.fields = TRUNCATED, {}
    if position + 1 < stop:
        report()
    if current is not None and start <= position < stop:
        if position + 1 < stop:  # the tar ended short of its planned count: its last sample may be cut
            current.problem, current.fields = TRUNCATED, {}
        yield current
    for missing in range(max(position + 1, start), stop):
        yield RawSample(shard, missing, "", problem=TRUNCATED)


def count_samples(path: str) -> int:
    """Number of samples (key runs) readable in the tar at `path`, reading headers only."""
    count, last_key = 0, None
    try:
        with open(path, "rb") as handle:
            for name, _, _ in _members(handle):
                key = split_name(name)[0]
                if key != last_key:
                    count, last_key = count + 1, key
    except _READ_ERRORS:
        pass  # a truncated tar holds what was read before the damage
    return count

"""Per-shard label index: each sample's key, class label and byte span in its tar, for random access.

A class-balanced epoch plan needs every sample's label before the first read, and reading a planned
sample needs to know where it lies in the tar. The shard writer saves both next to each shard that
holds labels, as `NAME.tar.index.json`: {"format", "tar_bytes", "keys", "labels", "spans"}, a span being
[first header byte, end of the sample's last member rounded up to the 512-byte block], so one seek and
one read fetch a sample. A shard without an index (img2dataset output, an older writer) is indexed by
one pass over its tar headers, reading only the small .cls members, and the result is cached next to
it when the folder is writable (each rank that finds no index scans, so index once before a large run).
An index whose tar_bytes differs from the file on disk is stale: the tar is indexed again, with a
warning.

A sample's label is None, and the sample is never planned, when it has no .cls member, the .cls is not
an integer, its key already occurred in the tar, or the tar ends inside it.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass

from dmlscale.data.tar_reader import split_name

LOG = logging.getLogger("dmlscale.data")
INDEX_SUFFIX = ".index.json"
INDEX_FORMAT = 1
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError)


@dataclass(frozen=True)
class ShardIndex:
    tar_bytes: int  # size of the tar the index describes
    keys: list[str]
    labels: list[int | None]
    spans: list[list[int]]  # [start, end) byte range of each sample in the tar

    def as_dict(self) -> dict:
        return {"format": INDEX_FORMAT, "tar_bytes": self.tar_bytes, "keys": self.keys, "labels": self.labels,
                "spans": self.spans}


def index_path(tar_path: str) -> str:
    return os.fspath(tar_path) + INDEX_SUFFIX


def member_end(member: tarfile.TarInfo) -> int:
    """First byte after the member's data, padded to the tar block."""
    return member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def parse_label(payload: bytes) -> int | None:
    """The int a .cls member holds, or None (the loader's decode reads it the same way)."""
    try:
        return int(payload.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def scan_shard(path: str) -> ShardIndex:
    """Index the tar at `path` by reading its headers and .cls members; never raises on bad data."""
    tar_bytes = os.path.getsize(path)
    keys: list[str] = []
    labels: list[int | None] = []
    spans: list[list[int]] = []
    seen: set[str] = set()
    spoiled = False  # the current sample repeats a key or a field
    fields: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                parts = split_name(member.name) if member.isfile() else None
                if parts is None:
                    continue
                key, extension = parts
                if not keys or key != keys[-1]:
                    spoiled, fields = key in seen, set()
                    seen.add(key)
                    keys.append(key)
                    labels.append(None)
                    spans.append([member.offset, member_end(member)])
                spans[-1][1] = member_end(member)
                if extension in fields:
                    spoiled = True
                fields.add(extension)
                if spoiled:
                    labels[-1] = None
                elif extension == "cls" and member_end(member) <= tar_bytes:
                    labels[-1] = parse_label(tar.extractfile(member).read(member.size))
    except _READ_ERRORS:
        pass  # a damaged tar: what was read before the damage is indexed
    for number, (start, end) in enumerate(spans):
        if end > tar_bytes:  # the tar ends inside this sample
            labels[number] = None
    return ShardIndex(tar_bytes, keys, labels, spans)


def write_index(tar_path: str, index: ShardIndex) -> str:
    """Save `index` next to its tar, atomically (a temporary file renamed into place); returns its path."""
    path = index_path(tar_path)
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w") as handle:
            json.dump(index.as_dict(), handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def read_index(tar_path: str) -> ShardIndex | None:
    """The saved index of the tar at `tar_path`, or None when there is none or it cannot be used."""
    path = index_path(tar_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            data = json.load(handle)
        if data.get("format") != INDEX_FORMAT or not len(data["keys"]) == len(data["labels"]) == len(data["spans"]):
            raise ValueError(f"format {data.get('format')!r} or unequal lengths")
        return ShardIndex(int(data["tar_bytes"]), data["keys"], data["labels"], data["spans"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        LOG.warning("ignoring the unreadable label index %s (%s); indexing its tar again", path, error)
        return None


def load_index(tar_path: str, *, cache: bool = True) -> ShardIndex:
    """The tar's index: the saved one when it matches the tar's size, else a fresh scan, saved next to
    the tar when `cache` and the folder allows."""
    saved = read_index(tar_path)
    tar_bytes = os.path.getsize(tar_path)
    if saved is not None and saved.tar_bytes == tar_bytes:
        return saved
    if saved is not None:
        LOG.warning("the label index of %s describes a tar of %d bytes, the file has %d: indexing it again",
                    tar_path, saved.tar_bytes, tar_bytes)
    index = scan_shard(tar_path)
    if cache:
        try:
            write_index(tar_path, index)
        except OSError as error:
            LOG.warning("could not cache the label index of %s (%s); each run indexes it again", tar_path, error)
    return index

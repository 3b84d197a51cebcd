"""Read the history a W&B run wrote to its local transaction log (`run-<id>.wandb`), offline.

wandb 0.31 ships no Python reader for this file (the old `DataStore` is gone; `wandb sync` only
uploads), so this is a small one. The format is a LevelDB-style log: a 7-byte header
(":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk `crc32 (4 bytes LE),
length (2 bytes LE), type (1 byte: full/first/middle/last)` and its payload; the CRC (zlib's
IEEE crc32) covers the type byte and the payload; a block tail shorter than a chunk header is zero
padding. Each reassembled record is a `wandb.proto.wandb_internal_pb2.Record`. A torn tail (the
process died mid-write) ends the read; a wrong CRC in the middle raises.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK_SIZE = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_record_payloads(path: str | Path) -> Iterator[bytes]:
    """Yield the serialized records of one `.wandb` file, in write order."""
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        return
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B transaction log (header {ident!r}, {magic:#x}, {version})")
    position, pending = _FILE_HEADER.size, b""
    while position + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK_SIZE - position % _BLOCK_SIZE
        if room < _CHUNK_HEADER.size:
            position += room  # zero padding at a block's end
            continue
        crc, length, chunk_type = _CHUNK_HEADER.unpack_from(data, position)
        start = position + _CHUNK_HEADER.size
        payload = data[start:start + length]
        if len(payload) < length:
            return  # torn tail
        if zlib.crc32(payload, zlib.crc32(bytes([chunk_type]))) != crc:
            raise ValueError(f"{path}: checksum mismatch in the chunk at byte {position}")
        position = start + length
        if chunk_type == _FULL:
            yield payload
        elif chunk_type == _FIRST:
            pending = payload
        elif chunk_type == _MIDDLE:
            pending += payload
        elif chunk_type == _LAST:
            yield pending + payload
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {chunk_type} at byte {position}")


def iter_records(path: str | Path) -> Iterator[object]:
    """Yield the parsed `wandb_internal_pb2.Record`s of one `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    for payload in iter_record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: str | Path) -> list[dict]:
    """The history rows of one `.wandb` file, each a dict of metric name -> value (with "_step");
    a logged object (an image) is a nested dict of its fields."""
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            *parents, leaf = [item.key] if item.key else list(item.nested_key)
            target = row
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = json.loads(item.value_json)
        rows.append(row)
    return rows


def run_log_files(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The transaction logs of every session of run `run_id` under `wandb_dir` (the folder wandb
    creates, `<dir>/wandb`), oldest session first (folder names start with the start time)."""
    folders = [p for p in Path(wandb_dir).glob(f"*run-*-{run_id}") if p.is_dir()]
    folders.sort(key=lambda folder: folder.name.split("run-", 1)[1])
    return [folder / f"run-{run_id}.wandb" for folder in folders if (folder / f"run-{run_id}.wandb").exists()]


def last_logged_step(wandb_dir: str | Path, run_id: str) -> int | None:
    """The largest `_step` any earlier session of `run_id` wrote under `wandb_dir`, or None."""
    steps = [row["_step"] for path in run_log_files(wandb_dir, run_id) for row in read_history(path) if "_step" in row]
    return max(steps) if steps else None


def wait_for_exit_record(path: str | Path, *, timeout_s: float = 30.0, poll_s: float = 0.005) -> bool:
    """Wait until the transaction log at `path` ends its run (holds the exit record); False on timeout.

    `wandb.finish()` returns once wandb-core has the exit record, but the core writes the file
    asynchronously; a resume in the same process, or a reader, must wait for the file.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if Path(path).exists() and any(record.WhichOneof("record_type") == "exit" for record in iter_records(path)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    """`python -m dmlscale.monitor.wandb_records RUN.wandb|RUN_FOLDER ...`: print the history rows
    (one JSON object a line), to check what an offline run holds before `wandb sync`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dmlscale.monitor.wandb_records", description=main.__doc__)
    parser.add_argument("paths", nargs="+", help="run-<id>.wandb files or the folders holding them")
    for given in parser.parse_args(argv).paths:
        path = Path(given)
        files = sorted(path.glob("*.wandb")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no .wandb file in {given!r}")
        for file in files:
            for row in read_history(file):
                print(json.dumps(row))


if __name__ == "__main__":
    main()

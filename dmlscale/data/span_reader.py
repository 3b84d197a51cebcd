"""Read one sample of a tar by its byte span (label_index.py): one seek, one read, never an exception.

The span's bytes are parsed as a small tar of their own, so pax headers and padding are handled by
tarfile. The result is the sample's fields by lower-cased extension, or the problem that spoils it:
TRUNCATED when the file ends inside the span, STALE_INDEX when the bytes there are not one sample of
the indexed key (the tar changed after it was indexed), DUPLICATE for a field repeated in the sample.
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO

from dmlscale.data.tar_reader import DUPLICATE, TRUNCATED, split_name

STALE_INDEX = "stale index"
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError)


def read_span(handle: BinaryIO, start: int, end: int) -> tuple[str, dict[str, bytes], str | None]:
    """(key, fields, problem) of the sample stored at bytes [start, end) of the open tar `handle`."""
    try:
        handle.seek(start)
        data = handle.read(end - start)
    except OSError:
        return "", {}, TRUNCATED
    if len(data) < end - start:
        return "", {}, TRUNCATED
    key, fields = None, {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                parts = split_name(member.name) if member.isfile() else None
                if parts is None:
                    continue
                if key is not None and parts[0] != key:
                    return key, {}, STALE_INDEX
                key, extension = parts
                if extension in fields:
                    return key, {}, DUPLICATE
                fields[extension] = tar.extractfile(member).read(member.size)
    except _READ_ERRORS:
        return key or "", {}, STALE_INDEX
    if key is None:
        return "", {}, STALE_INDEX
    return key, fields, None


class TarHandles:
    """Open tar files by path, kept open for the next read; picklable (a DataLoader worker reopens them)."""

    def __init__(self) -> None:
        self._open: dict[str, BinaryIO] = {}

    def get(self, path: str) -> BinaryIO:
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = open(path, "rb")
        return handle

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open = {}

    def __getstate__(self) -> dict:
        return {"_open": {}}

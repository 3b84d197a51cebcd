"""A lean reader of tar headers: (name, size, data offset) of each regular file, as the standard library's
tarfile gives them, without building a TarInfo per member (tarfile's header parsing was a fifth of a
quickstart training step).

Reads ustar, GNU (long names, base-256 sizes) and POSIX pax (path and size records) headers. Ends the way
tarfile does: quietly at a zero block, a cut header or a header with a bad checksum after the first
member; with TarReadError when the very first header is unreadable, a header after a long-name or pax
header is, or a member's data runs past the end of the file (seen when the next header is sought).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
REGULAR_TYPES = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
LONG_NAME, PAX_HEADER, PAX_GLOBAL = b"L", b"x", b"g"
POSIX_MAGIC = b"ustar\x0000"


class TarReadError(ValueError):
    """The tar cannot be read at this point (a bad first header, data cut short)."""


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256: big-endian, the first byte's top bit marks it
        value = int.from_bytes(field, "big", signed=False) & ~(0x80 << (8 * (len(field) - 1)))
        return -value if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    signed = unsigned - 2 * sum(byte for byte in header if byte > 127) + 2 * sum(
        byte for byte in header[148:156] if byte > 127)
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    records, position = {}, 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        length = int(data[position:space])
        if length <= 0:
            break
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def iter_members(handle: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(name, size, offset of its data) of every regular file member of the tar open in `handle`."""
    offset, first, long_name, pax = 0, True, None, {}
    while True:
        handle.seek(offset)
        header = handle.read(BLOCK)
        if len(header) < BLOCK or header.count(0) == BLOCK:  # end of archive, or a cut header
            if first and len(header) < BLOCK:
                raise TarReadError("empty or cut first header")
            return
        if not _checksum_ok(header):
            if first:
                raise TarReadError("bad checksum in the first header")
            if long_name is not None or pax:
                raise TarReadError("bad header after an extended header")
            return
        first = False
        try:
            size = _number(header[124:136])
        except ValueError:
            return
        kind = header[156:157]
        data = offset + BLOCK
        offset = data + -(-size // BLOCK) * BLOCK
        if kind in (LONG_NAME, PAX_HEADER, PAX_GLOBAL):
            handle.seek(data)
            payload = handle.read(size)
            if len(payload) < size:
                raise TarReadError("extended header cut short")
            if kind == LONG_NAME:
                long_name = _text(payload)
            elif kind == PAX_HEADER:
                pax = _pax_records(payload)
            continue
        name = _text(header[:100])
        if header[257:265] == POSIX_MAGIC and header[345]:
            name = _text(header[345:500]) + "/" + name
        name = pax.get("path", long_name or name)
        if "size" in pax:
            size = int(pax["size"])
            offset = data + -(-size // BLOCK) * BLOCK
        long_name, pax = None, {}
        if offset > data:  # the data must end inside the file (tarfile's "unexpected end of data")
            handle.seek(offset - 1)
            if not handle.read(1):
                if kind in REGULAR_TYPES:
                    yield name, size, data  # its read comes up short, which the caller reports
                raise TarReadError("unexpected end of data")
        if kind in REGULAR_TYPES:
            yield name, size, data

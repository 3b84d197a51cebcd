"""The lean tar header reader against the standard library's tarfile, on tars tarfile writes in each
format, and on the ways a tar is damaged."""

from __future__ import annotations

import io
import tarfile

import pytest

from dmlscale.data.tar_headers import TarReadError, iter_members


def write_tar(path, tar_format: int) -> None:
    with tarfile.open(path, "w", format=tar_format) as tar:
        directory = tarfile.TarInfo("folder")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        long_base = "x" * (90 if tar_format == tarfile.USTAR_FORMAT else 120)  # ustar: base names up to 100
        names = ["a.jpg", "a.txt", "folder/" + long_base + ".cls", "b/" * 60 + "deep.txt", "é-unicode.txt",
                 "empty.txt"]
        for index, name in enumerate(names):
            data = b"" if name == "empty.txt" else bytes(range(256)) * (index + 1) + b"tail"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)


def tarfile_members(path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.size, m.offset_data) for m in tar if m.isfile()]


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT],
                         ids=["gnu", "pax", "ustar"])
def test_members_names_sizes_and_offsets_are_tarfiles(tmp_path, tar_format):
    path = tmp_path / "t.tar"
    write_tar(path, tar_format)
    with open(path, "rb") as handle:
        got = list(iter_members(handle))
    assert got == tarfile_members(path) and len(got) == 6
    with open(path, "rb") as handle:  # the offsets point at the data
        for name, size, offset in got:
            handle.seek(offset)
            assert len(handle.read(size)) == size


def test_damage_ends_like_tarfile(tmp_path):
    path = tmp_path / "t.tar"
    write_tar(path, tarfile.GNU_FORMAT)
    whole = path.read_bytes()
    members = tarfile_members(path)
    name, size, offset = members[2]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:offset + size // 2])  # inside a member's data: it is yielded, then an error
    with open(cut, "rb") as handle:
        seen = []
        with pytest.raises(TarReadError, match="unexpected end of data"):
            for member in iter_members(handle):
                seen.append(member)
    assert seen == members[:3]
    cut.write_bytes(whole[:members[3][2] - 200])  # inside the next header: ends quietly
    with open(cut, "rb") as handle:
        assert list(iter_members(handle)) == members[:3]
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 100)
    with open(garbage, "rb") as handle, pytest.raises(TarReadError, match="first header"):
        list(iter_members(handle))
    later = bytearray(whole)
    later[members[1][2] - 512:members[1][2] - 512 + 20] = b"Z" * 20  # a bad checksum after the first member
    garbage.write_bytes(bytes(later))
    with open(garbage, "rb") as handle:
        assert list(iter_members(handle)) == members[:1]
    with tarfile.open(garbage) as tar:  # tarfile stops there too
        assert [m.name for m in tar if m.isfile()] == [members[0][0]]
    later = bytearray(whole)
    later[members[3][2] - 512:members[3][2] - 512 + 20] = b"Z" * 20  # the header after a GNU long-name header
    garbage.write_bytes(bytes(later))
    with open(garbage, "rb") as handle, pytest.raises(TarReadError, match="after an extended header"):
        assert [m[0] for m in iter_members(handle)] == [m[0] for m in members[:3]]
    with tarfile.open(garbage) as tar, pytest.raises(tarfile.ReadError):  # an error for tarfile too
        list(tar)
    (tmp_path / "empty.tar").write_bytes(b"")
    with open(tmp_path / "empty.tar", "rb") as handle, pytest.raises(TarReadError):
        list(iter_members(handle))

"""Write samples as img2dataset-style WebDataset tar shards, reproducibly and without half-written files.

A sample is a dict: "__key__" (a str without "." or "/") plus any of "jpg" (JPEG bytes or a PIL image),
"txt" (str), "cls" (int) and "json" (dict). Shard i is `{prefix}{i:06d}.tar`; inside, each sample's
members `KEY.jpg, KEY.txt, KEY.json, KEY.cls` follow each other in that order (WebDataset groups
consecutive members by key). `sizes.json` maps each shard's file name to its number of samples, the
format open_clip reads. A shard holding class labels ("cls") gets a label index beside it,
`{name}.index.json` (label_index.py: each sample's label and byte span, for class-balanced loading).

Samples stream through: memory holds one sample, whatever the shard size. Re-runs are safe (one writer
per folder at a time): each file is written under a hidden temporary name in the same folder and
renamed into place when complete (atomic on POSIX), so a reader never sees half a shard; `sizes.json`
is removed once the first sample has been encoded and written last, so its presence marks a complete
run. Stale output is cleaned rather than refused: shards of a previous run that this run did not
rewrite (listed in the old `sizes.json`, or named like this run's shards) are deleted at the end, as
are temporary files left by an interrupted run; other files in the folder are left alone. Tar headers
carry no time, user or group, and JSON is written with sorted keys, so the same samples give
byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dmlscale.data.label_index import ShardIndex, index_path, parse_label, write_index
from dmlscale.param_checks import check_positive_int

if TYPE_CHECKING:
    import PIL.Image

SIZES_FILE = "sizes.json"
# member extension -> order inside a sample; img2dataset writes the image first
EXTENSIONS: tuple[str, ...] = ("jpg", "txt", "json", "cls")
DEFAULT_JPEG_QUALITY = 95


def shard_name(index: int, prefix: str = "") -> str:
    return f"{prefix}{index:06d}.tar"


def check_key(key: object) -> str:
    """Return `key`; raise unless it is a non-empty str without "." or "/" (WebDataset splits on the
    first dot of a member name, and a slash would make a folder inside the tar)."""
    if not isinstance(key, str) or not key or "." in key or "/" in key or "\\" in key or "\x00" in key:
        raise ValueError(f"sample __key__ must be a non-empty str without '.', '/' or '\\', got {key!r}")
    return key


def encode_jpeg(image: PIL.Image.Image, *, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """JPEG bytes of a PIL image, converted to RGB, without chroma subsampling (4:4:4) so that
    thin strokes keep their colour; deterministic for a given Pillow build."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=False)
    return buffer.getvalue()


def encode_sample(sample: dict, *, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> tuple[str, list[tuple[str, bytes]]]:
    """(key, [(member name, bytes), ...]) in EXTENSIONS order; raise on an unknown field or type."""
    if not isinstance(sample, dict):
        raise ValueError(f"a sample must be a dict, got {type(sample).__name__}: {sample!r:.80}")
    key = check_key(sample.get("__key__"))
    unknown = sorted(set(sample) - set(EXTENSIONS) - {"__key__"})
    if unknown:
        raise ValueError(f"sample {key!r}: unknown fields {unknown}; allowed: __key__ and {list(EXTENSIONS)}")
    members = []
    for extension in EXTENSIONS:
        if extension in sample:
            members.append((f"{key}.{extension}", _encode_field(key, extension, sample[extension], jpeg_quality)))
    if not members:
        raise ValueError(f"sample {key!r} has no data fields; give at least one of {list(EXTENSIONS)}")
    return key, members


def _encode_field(key: str, extension: str, value, jpeg_quality: int) -> bytes:
    if extension == "jpg":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if hasattr(value, "save") and hasattr(value, "convert"):  # a PIL image, without importing PIL
            return encode_jpeg(value, quality=jpeg_quality)
    elif extension == "txt" and isinstance(value, str):
        return value.encode("utf-8")
    elif extension == "cls" and isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    elif extension == "json" and isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    allowed = {"jpg": "bytes or a PIL image", "txt": "str", "cls": "int", "json": "dict"}[extension]
    raise ValueError(f"sample {key!r}: {extension!r} must be {allowed}, got {type(value).__name__}")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A header with fixed metadata, so equal content gives equal bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _publish(handle, temporary: Path, path: Path) -> None:
    """Flush `handle` (open on `temporary`) to disk, close it and rename it onto `path`."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(temporary, path)


class _ShardSink:
    """Streams encoded samples into `samples_per_shard`-sample tars, each under a temporary name until
    it is complete; memory holds one sample at a time."""

    def __init__(self, output_dir: Path, samples_per_shard: int, prefix: str):
        self.output_dir, self.samples_per_shard, self.prefix = output_dir, samples_per_shard, prefix
        self.sizes: dict[str, int] = {}
        self.handle = self.tar = self.temporary = None
        self.keys: set[str] = set()  # keys in the open shard: WebDataset would merge two equal ones
        self.index: list[tuple[str, int | None, int, int]] = []  # (key, label, start, end) of the open shard

    def _name(self) -> str:
        return shard_name(len(self.sizes), self.prefix)

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if key in self.keys:
            raise ValueError(f"duplicate sample __key__ {key!r} within shard {self._name()}")
        if self.tar is None:
            self.temporary = _temporary_path(self.output_dir / self._name())
            self.handle = open(self.temporary, "wb")
            self.tar = tarfile.open(fileobj=self.handle, mode="w", format=tarfile.PAX_FORMAT)
        start, label = self.tar.offset, None
        for member_name, payload in members:
            self.tar.addfile(_tar_info(member_name, len(payload)), io.BytesIO(payload))
            if member_name.endswith(".cls"):
                label = parse_label(payload)
        self.keys.add(key)
        self.index.append((key, label, start, self.tar.offset))
        if len(self.keys) == self.samples_per_shard:
            self.finish_shard()

    def finish_shard(self) -> None:
        if self.tar is None:
            return
        name = self._name()
        self.tar.close()  # writes the end-of-archive blocks into handle
        path = self.output_dir / name
        Path(index_path(str(path))).unlink(missing_ok=True)  # an old index never describes the new tar
        _publish(self.handle, self.temporary, path)
        if any(label is not None for _, label, _, _ in self.index):
            keys, labels, starts, ends = (list(column) for column in zip(*self.index))
            write_index(str(path), ShardIndex(path.stat().st_size, keys, labels, [list(s) for s in zip(starts, ends)]))
        self.sizes[name] = len(self.keys)
        self.handle = self.tar = self.temporary = None
        self.keys, self.index = set(), []

    def abort(self) -> None:
        """Drop the shard being written (after an error); finished shards stay."""
        if self.handle is not None:
            self.handle.close()
            self.temporary.unlink(missing_ok=True)
        self.handle = self.tar = self.temporary = None


def _is_tar_file_name(name) -> bool:
    return isinstance(name, str) and name.endswith(".tar") and "/" not in name and "\\" not in name


def _previous_shards(output_dir: Path, prefix: str) -> set[str]:
    """Shard files a previous run may have left: those in its sizes.json and those named like ours."""
    names = set()
    sizes_path = output_dir / SIZES_FILE
    if sizes_path.exists():
        try:
            names |= {name for name in json.loads(sizes_path.read_text()) if _is_tar_file_name(name)}
        except (ValueError, TypeError):
            pass  # an unreadable sizes.json is replaced below anyway
    pattern = re.compile(re.escape(prefix) + r"\d{6}\.tar")
    names |= {path.name for path in output_dir.iterdir() if pattern.fullmatch(path.name)}
    return names


def _remove_leftover_temporaries(output_dir: Path, prefix: str) -> None:
    pattern = re.compile(r"\." + re.escape(prefix) + r"\d{6}\.tar(\.index\.json)?\.tmp-\d+|\.sizes\.json\.tmp-\d+")
    for path in output_dir.iterdir():
        if pattern.fullmatch(path.name):
            path.unlink(missing_ok=True)


def describe_summary(summary: dict) -> str:
    """One line for a `write_shards` summary: samples, shards, size and folder."""
    return (f"{summary['num_samples']} samples in {len(summary['shards'])} shards, "
            f"{summary['num_bytes'] / 2**20:.1f} MiB -> {summary['output_dir']}")


def write_shards(samples: Iterable[dict], output_dir: str | Path, *, samples_per_shard: int = 1000,
                 prefix: str = "", progress: bool = False,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> dict:
    """Write `samples` (in the order given) to `output_dir` as tar shards plus sizes.json.

    Returns {"output_dir", "shards" (paths, in order), "sizes" ({file name: samples}),
    "num_samples", "num_bytes"}. Raises ValueError on a bad key, field or argument, and when there are
    no samples (an empty dataset is almost always a wrong path)."""
    check_positive_int("write_shards", "samples_per_shard", samples_per_shard)
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"write_shards: prefix must be a str without '/' and not starting with '.', got {prefix!r}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"write_shards: jpeg_quality must be an int in [1, 100], got {jpeg_quality!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"write_shards: output_dir {str(output_dir)!r} exists and is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)

    iterator = _with_progress(samples, progress)
    first = next(iterator, None)  # an empty or invalid source fails before the old output is touched
    if first is None:
        raise ValueError(f"write_shards: no samples to write to {str(output_dir)!r}")
    first_encoded = encode_sample(first, jpeg_quality=jpeg_quality)

    previous = _previous_shards(output_dir, prefix)
    (output_dir / SIZES_FILE).unlink(missing_ok=True)  # absent until this run completes
    sink = _ShardSink(output_dir, samples_per_shard, prefix)
    try:
        sink.add(*first_encoded)
        for sample in iterator:
            sink.add(*encode_sample(sample, jpeg_quality=jpeg_quality))
        sink.finish_shard()
    except BaseException:
        sink.abort()
        raise

    for stale in sorted(previous - set(sink.sizes)):
        (output_dir / stale).unlink(missing_ok=True)
        Path(index_path(str(output_dir / stale))).unlink(missing_ok=True)
    _remove_leftover_temporaries(output_dir, prefix)
    sizes_path = output_dir / SIZES_FILE
    with open(_temporary_path(sizes_path), "wb") as handle:
        handle.write((json.dumps(sink.sizes, indent=1, sort_keys=True) + "\n").encode())
        _publish(handle, _temporary_path(sizes_path), sizes_path)

    shards = [output_dir / name for name in sink.sizes]
    return {
        "output_dir": str(output_dir),
        "shards": [str(path) for path in shards],
        "sizes": dict(sink.sizes),
        "num_samples": sum(sink.sizes.values()),
        "num_bytes": sum(path.stat().st_size for path in shards),
    }


def _with_progress(samples: Iterable[dict], progress: bool) -> Iterator[dict]:
    if not progress:
        return iter(samples)
    from tqdm import tqdm

    total = len(samples) if hasattr(samples, "__len__") else None
    return iter(tqdm(samples, total=total, unit="sample", desc="writing shards"))

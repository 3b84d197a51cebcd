"""Sample sources for `write_shards`: a folder of images, a CSV/JSONL table, and real handwritten digits.

Each source is a re-iterable, sized iterable of sample dicts with deterministic keys (the item's
position in a sorted listing or in the table, zero-padded), so the same input gives the same shards.
Images are decoded once to catch broken files; JPEG files in RGB or grayscale are passed through
byte for byte, other formats are converted to RGB (alpha dropped) and encoded as JPEG.

A missing, unreadable or undecodable image raises ValueError naming the file
(on_bad_image="raise", the default: a broken dataset should be noticed), or with on_bad_image="skip"
is left out and its path recorded in the source's `skipped` list; the keys of the other samples do not
change. Problems that are not about one image (no caption file, a bad label, a missing column) always
raise.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from dmlscale.data.digits import (DIGIT_CLASSNAMES, HELDOUT_TEMPLATES, TRAIN_CAPTION_TEMPLATES,
                                  DigitsSamples, digits_samples, write_digits_shards)
from dmlscale.data.shards import encode_jpeg

__all__ = ["DIGIT_CLASSNAMES", "HELDOUT_TEMPLATES", "TRAIN_CAPTION_TEMPLATES", "BadImageError", "DigitsSamples",
           "SampleSource", "digits_samples", "folder_samples", "load_image_jpeg", "table_samples",
           "write_digits_shards"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_MODES = ("txt", "labels_from_subfolders")
BAD_IMAGE_POLICIES = ("raise", "skip")
TABLE_SUFFIXES = (".csv", ".jsonl")


class BadImageError(ValueError):
    """An image file that is missing or cannot be decoded."""


def load_image_jpeg(path: Path) -> bytes:
    """JPEG bytes for the image at `path`: the file itself when it is an RGB or grayscale JPEG that
    decodes fully, else the decoded image re-encoded; BadImageError naming the file otherwise."""
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return data
            return encode_jpeg(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {str(path)!r}: {error}") from error


def _sample_key(index: int) -> str:
    return f"{index:09d}"


class SampleSource:
    """A sized, re-iterable source: `items` turned into samples by `to_sample(key, item)`.

    `labels` gives each item's class (None: unlabelled), for a stratified `split`. `positions` are the
    items' positions in the whole source, which make their keys (a split keeps the source's keys).
    `skipped` lists the paths of bad images left out by the latest iteration (on_bad_image="skip")."""

    def __init__(self, items: Sequence, to_sample: Callable[[str, object], dict], *, on_bad_image: str = "raise",
                 labels: Sequence[int | None] | None = None, positions: Sequence[int] | None = None) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {list(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
        self.items, self.to_sample, self.on_bad_image = items, to_sample, on_bad_image
        self.labels = list(labels) if labels is not None else [None] * len(items)
        self.positions = list(positions) if positions is not None else list(range(len(items)))
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def split(self, test_fraction: float, *, seed: int = 0) -> tuple[SampleSource, SampleSource]:
        """(train, test) sources with disjoint items: per label (all items when unlabelled), a permutation
        seeded by `seed` sends round(test_fraction * count) items to test, so each class keeps its share;
        both keep the source's order and keys. ValueError when the fraction is not in (0, 1) or a side
        would be empty."""
        import numpy as np

        from dmlscale.data.digits import stratified_split

        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        labels_N = np.array([-1 if label is None else label for label in self.labels], dtype=np.int64)
        train, test = stratified_split(labels_N, seed=seed, test_fraction=float(test_fraction))
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"test_fraction={test_fraction!r} of {len(self.items)} items leaves "
                             f"{len(train)} for train and {len(test)} for test; both need at least one")
        return tuple(SampleSource([self.items[i] for i in part], self.to_sample, on_bad_image=self.on_bad_image,
                                  labels=[self.labels[i] for i in part], positions=[self.positions[i] for i in part])
                     for part in (train, test))

    def __iter__(self) -> Iterator[dict]:
        self.skipped = []
        for position, item in zip(self.positions, self.items):
            try:
                sample = self.to_sample(_sample_key(position), item)
            except BadImageError:
                if self.on_bad_image == "raise":
                    raise
                self.skipped.append(str(item[0]))
                continue
            yield sample


def _check_folder(folder: str | Path, owner: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{owner}: folder {str(folder)!r} does not exist or is not a folder")
    return folder


def _images_under(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively, hidden ones excluded), sorted by relative path."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def folder_samples(folder: str | Path, *, captions: str = "txt", on_bad_image: str = "raise") -> SampleSource:
    """Samples from the images under `folder`, in sorted path order.

    captions="txt": every image has a caption in a same-stem .txt file beside it ("txt").
    captions="labels_from_subfolders": each immediate subfolder is a class; labels ("cls") number the
    sorted subfolder names from 0, and "json" holds the name as "classname".
    "json" always holds the image's path relative to `folder`."""
    folder = _check_folder(folder, "folder_samples")
    if captions not in CAPTION_MODES:
        raise ValueError(f"folder_samples: captions must be one of {list(CAPTION_MODES)}, got {captions!r}")
    if captions == "txt":
        items = [(path, None) for path in _images_under(folder)]
    else:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        items = [(path, label) for label, name in enumerate(classes) for path in _images_under(folder / name)]
        class_names = classes
    if not items:
        raise ValueError(f"folder_samples: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(folder)!r}"
                         + (" in class subfolders" if captions != "txt" else ""))

    def to_sample(key: str, item) -> dict:
        path, label = item
        sample = {"__key__": key, "json": {"path": path.relative_to(folder).as_posix()}}
        if label is None:
            caption_path = path.with_suffix(".txt")
            if not caption_path.is_file():
                raise ValueError(f"folder_samples: image {str(path)!r} has no caption file {caption_path.name!r}")
            sample["txt"] = caption_path.read_text(encoding="utf-8").strip()
        else:
            sample["cls"], sample["json"]["classname"] = label, class_names[label]
        sample["jpg"] = load_image_jpeg(path)
        return sample

    return SampleSource(items, to_sample, on_bad_image=on_bad_image, labels=[label for _, label in items])


def _read_table_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"table_samples: {str(path)!r} line {line_number} is not JSON: {error}") from error
        if not isinstance(row, dict):
            raise ValueError(f"table_samples: {str(path)!r} line {line_number} is not a JSON object: {line!r:.80}")
        rows.append(row)
    return rows


def _parse_label(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"table_samples: {where}: label must be an integer, got {value!r}")


def table_samples(path: str | Path, *, on_bad_image: str = "raise") -> SampleSource:
    """Samples from a CSV (with a header) or JSONL table with a "path" column and a "caption" and/or
    "label" (integer) column, in row order. Relative image paths are resolved against the table's
    folder. Other columns go to "json", together with "path" as written in the table."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"table_samples: table {str(path)!r} must end in one of {list(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"table_samples: table {str(path)!r} does not exist")
    rows = _read_table_rows(path)
    if not rows:
        raise ValueError(f"table_samples: table {str(path)!r} has no rows")
    items = []
    for row_number, row in enumerate(rows, start=1):
        where = f"{str(path)!r} row {row_number}"
        if None in row:
            raise ValueError(f"table_samples: {where} has more fields than the header: {row[None]!r}")
        if not row.get("path") or not isinstance(row["path"], str):
            raise ValueError(f"table_samples: {where} has no 'path' (columns: {sorted(row)})")
        if "caption" not in row and "label" not in row:
            raise ValueError(f"table_samples: {where} needs a 'caption' or 'label' column (columns: {sorted(row)})")
        if "caption" in row and not isinstance(row["caption"], str):
            raise ValueError(f"table_samples: {where}: caption must be a string, got {row['caption']!r}")
        label = _parse_label(row["label"], where) if "label" in row else None
        items.append((path.parent / row["path"], row, label))

    def to_sample(key: str, item) -> dict:
        image_path, row, label = item
        sample = {"__key__": key, "jpg": load_image_jpeg(image_path),
                  "json": {name: value for name, value in row.items() if name not in ("caption", "label")}}
        if "caption" in row:
            sample["txt"] = row["caption"]
        if label is not None:
            sample["cls"] = label
        return sample

    return SampleSource(items, to_sample, on_bad_image=on_bad_image, labels=[label for _, _, label in items])

"""Labelled shard sets for the class-balanced loader tests, written with the project's writer from real digits.

Class sizes are chosen so the guarantees are exact: 12 per class (m=4, global batch 24: 5 batches that use
every sample once per epoch) or 15 per class (3 leftovers per class per epoch, one for each of its groups).
A bad sample keeps its label but gets bytes that are not an image, so the index plans it and decoding
fails, as with a corrupt file in a real shard.
"""

from __future__ import annotations

import itertools
import tarfile
from pathlib import Path

from dmlscale.data.shards import write_shards
from dmlscale.data.sources import digits_samples

NUM_CLASSES = 10
NOT_AN_IMAGE = b"these bytes are not an image"


def per_class_digits(per_class: int, *, classes: int = NUM_CLASSES) -> list[dict]:
    """The first `per_class` train digits (16 x 16) of each of the first `classes` classes, class by class
    interleaved in the order the digits come."""
    chosen, counts = [], dict.fromkeys(range(classes), 0)
    for sample in itertools.islice(digits_samples("train", image_size=16), 600):
        label = sample["cls"]
        if label in counts and counts[label] < per_class:
            counts[label] += 1
            chosen.append({key: sample[key] for key in ("__key__", "jpg", "cls")})
            if len(chosen) == per_class * classes:
                break
    assert set(counts.values()) == {per_class}
    return chosen


def write_labelled(folder: Path, samples: list[dict], *, bad_keys=(), samples_per_shard: int = 50) -> dict:
    """Shards of `samples` (those keyed in `bad_keys` with a non-image .jpg); {"pattern", "shards", "labels"
    (key -> label read back from the tars with tarfile), "bad"}."""
    samples = [dict(s, jpg=NOT_AN_IMAGE) if s["__key__"] in bad_keys else s for s in samples]
    summary = write_shards(samples, folder, samples_per_shard=samples_per_shard)
    return {"pattern": f"{folder}/{{000000..{len(summary['shards']) - 1:06d}}}.tar", "shards": summary["shards"],
            "labels": tar_labels(summary["shards"]), "bad": set(bad_keys)}


def tar_labels(shards: list[str]) -> dict[str, int]:
    """key -> label from the .cls members, read with tarfile (independently of the loader)."""
    labels = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cls"):
                    labels[member.name.split(".")[0]] = int(tar.extractfile(member).read())
    return labels


def first_of_classes(samples: list[dict], classes) -> set[str]:
    """The key of the first sample of each of `classes`."""
    return {next(s["__key__"] for s in samples if s["cls"] == c) for c in classes}

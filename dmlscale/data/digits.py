"""Real handwritten digits (scikit-learn's `load_digits`, 1797 images of 8x8) as image-text-label samples.

A small, offline, real dataset for CLIP-style and metric-learning runs: each digit is upscaled to an RGB
image (dark ink on light paper, every source pixel a square block), labelled with its class in "cls",
and captioned from TRAIN_CAPTION_TEMPLATES. HELDOUT_TEMPLATES are never used in captions, so zero-shot
evaluation with them measures generalisation to unseen prompts.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmlscale.data.shards import write_shards
from dmlscale.param_checks import check_positive_int

if TYPE_CHECKING:
    import PIL.Image

DIGIT_CLASSNAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

TRAIN_CAPTION_TEMPLATES: list[str] = [
    "a photo of the handwritten digit {}.",
    "a scan of a handwritten {}.",
    "the number {}, written by hand.",
    "a pixelated black and white image of the digit {}.",
    "a hand-drawn {} on white paper.",
    "a low-resolution picture of the numeral {}.",
]

HELDOUT_TEMPLATES: list[str] = [
    "an image of the number {}.",
    "a small drawing of a {}.",
    "someone wrote the digit {} here.",
    "a grainy picture showing a {}.",
]

DIGIT_SPLITS = ("train", "test")
_MAX_INK = 16  # load_digits pixel values run from 0 (blank) to 16 (full ink)


def render_digit(pixels_88: np.ndarray, image_size: int = 32) -> PIL.Image.Image:
    """PIL RGB image of one 8x8 digit (values 0..16): paper 255 minus ink, each pixel a nearest-neighbour
    block of image_size / 8 (uneven blocks when image_size is not a multiple of 8)."""
    from PIL import Image

    gray_88 = np.rint(255.0 - np.asarray(pixels_88, dtype=np.float64) * (255.0 / _MAX_INK)).astype(np.uint8)
    image = Image.fromarray(gray_88, mode="L").resize((image_size, image_size), Image.Resampling.NEAREST)
    return image.convert("RGB")


def stratified_split(labels_N: np.ndarray, *, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both sorted: per class, a seeded permutation sends
    round(test_fraction * class size) samples to test, so every class keeps its proportion."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels_N):
        members = np.flatnonzero(labels_N == label)
        members = members[rng.permutation(len(members))]
        num_test = int(round(test_fraction * len(members)))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def caption_for(key: str, classname: str, *, seed: int) -> str:
    """A caption from TRAIN_CAPTION_TEMPLATES, picked by a hash of (seed, key): stable across processes
    and Python versions, unlike hash()."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    template = TRAIN_CAPTION_TEMPLATES[int.from_bytes(digest[:8], "big") % len(TRAIN_CAPTION_TEMPLATES)]
    return template.format(classname)


def digit_key(index: int) -> str:
    """The key of load_digits()'s sample `index`; unique across splits."""
    return f"digit{index:04d}"


class DigitsSamples:
    """Iterable of one split's samples, re-iterable and sized (for progress bars)."""

    def __init__(self, split: str, *, seed: int = 0, image_size: int = 32, test_fraction: float = 0.25) -> None:
        if split not in DIGIT_SPLITS:
            raise ValueError(f"digits_samples: split must be one of {list(DIGIT_SPLITS)}, got {split!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"digits_samples: seed must be an int, got {seed!r}")
        check_positive_int("digits_samples", "image_size", image_size)
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"digits_samples: test_fraction must be a number in (0, 1), got {test_fraction!r}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images_N88, self.labels_N = digits.images, digits.target.astype(np.int64)
        train, test = stratified_split(self.labels_N, seed=seed, test_fraction=float(test_fraction))
        self.indices = train if split == "train" else test
        self.split, self.seed, self.image_size = split, seed, image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[dict]:
        for index in self.indices.tolist():
            key, label = digit_key(index), int(self.labels_N[index])
            classname = DIGIT_CLASSNAMES[label]
            yield {
                "__key__": key,
                "jpg": render_digit(self.images_N88[index], self.image_size),
                "txt": caption_for(key, classname, seed=self.seed),
                "cls": label,
                "json": {"classname": classname, "digits_index": index, "split": self.split},
            }


def digits_samples(split: str, *, seed: int = 0, image_size: int = 32, test_fraction: float = 0.25) -> DigitsSamples:
    """Samples of scikit-learn's handwritten digits for `split` ("train" or "test"): "jpg" (a PIL RGB
    image of image_size x image_size), "txt" (a caption), "cls" (0-9) and "json" (classname,
    digits_index, split). The split is stratified and fixed by `seed`; so are the captions."""
    return DigitsSamples(split, seed=seed, image_size=image_size, test_fraction=test_fraction)


def write_digits_shards(output_dir: str | Path, *, samples_per_shard: int = 1000, seed: int = 0, image_size: int = 32,
                        test_fraction: float = 0.25, max_samples_per_split: int | None = None,
                        prefix: str = "", progress: bool = False) -> dict[str, dict]:
    """Write the digits as shards in output_dir/train and output_dir/test; {split: write_shards summary}.
    `max_samples_per_split` keeps only the first samples of each split (quick test fixtures)."""
    if max_samples_per_split is not None:
        check_positive_int("write_digits_shards", "max_samples_per_split", max_samples_per_split)
    summaries = {}
    for split in DIGIT_SPLITS:
        samples = digits_samples(split, seed=seed, image_size=image_size, test_fraction=test_fraction)
        if max_samples_per_split is not None:
            samples = itertools.islice(samples, max_samples_per_split)
        summaries[split] = write_shards(samples, Path(output_dir) / split, samples_per_shard=samples_per_shard,
                                        prefix=prefix, progress=progress)
    return summaries

"""Sample sources: real digits (split, pixels, captions), an image folder and a CSV/JSONL table, each
written with write_shards and read back with webdataset."""

import functools
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from dmlscale.data import sources
from dmlscale.data.shards import write_shards

MAX_JPEG_ERROR, MEAN_JPEG_ERROR = 24, 4.0  # see tests/data/test_shards.py


@functools.cache
def digits():
    return load_digits()


def expected_digit_pixels(index: int, image_size: int = 32) -> np.ndarray:
    """Dark ink on light paper, each of the 8x8 pixels a block, computed directly from load_digits."""
    ink_88 = digits().images[index]
    gray_88 = np.rint(255 - ink_88 * 255 / 16).astype(np.uint8)
    block = image_size // 8
    return np.repeat(np.kron(gray_88, np.ones((block, block), dtype=np.uint8))[:, :, None], 3, axis=2)


def decoded(shards) -> list[dict]:
    return list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))


def test_digit_constants():
    assert sources.DIGIT_CLASSNAMES == ["zero", "one", "two", "three", "four",
                                        "five", "six", "seven", "eight", "nine"]
    for template in sources.TRAIN_CAPTION_TEMPLATES + sources.HELDOUT_TEMPLATES:
        assert template.count("{}") == 1
    assert not set(sources.TRAIN_CAPTION_TEMPLATES) & set(sources.HELDOUT_TEMPLATES)
    assert len(sources.TRAIN_CAPTION_TEMPLATES) >= 3 and len(sources.HELDOUT_TEMPLATES) >= 3


def test_digits_split_is_stratified_disjoint_and_complete():
    target_N = digits().target
    train = [s["json"]["digits_index"] for s in sources.digits_samples("train")]
    test = [s["json"]["digits_index"] for s in sources.digits_samples("test")]
    assert sorted(train + test) == list(range(len(target_N)))  # 1797, each once
    per_class_test = np.bincount(target_N[test], minlength=10)
    per_class = np.bincount(target_N, minlength=10)
    np.testing.assert_array_equal(per_class_test, np.rint(0.25 * per_class).astype(int))
    other_seed = [s["json"]["digits_index"] for s in sources.digits_samples("test", seed=1)]
    assert sorted(other_seed) != sorted(test) and len(other_seed) == len(test)


def test_digits_samples_are_deterministic_and_captioned_from_training_templates():
    first, second = list(sources.digits_samples("test")), list(sources.digits_samples("test"))
    target_N = digits().target
    used_templates = set()
    for a, b in zip(first, second, strict=True):
        assert a["__key__"] == b["__key__"] and a["txt"] == b["txt"]
        index = a["json"]["digits_index"]
        assert a["cls"] == target_N[index] and a["json"]["classname"] == sources.DIGIT_CLASSNAMES[target_N[index]]
        matches = [t for t in sources.TRAIN_CAPTION_TEMPLATES if t.format(a["json"]["classname"]) == a["txt"]]
        assert len(matches) == 1
        used_templates.add(matches[0])
        np.testing.assert_array_equal(np.asarray(a["jpg"]), expected_digit_pixels(index))
    assert used_templates == set(sources.TRAIN_CAPTION_TEMPLATES)  # 450 draws reach every template
    reseeded = [s["txt"] for s in sources.digits_samples("test", seed=0, test_fraction=0.25)]
    assert reseeded == [s["txt"] for s in first]


def test_digit_shards_decode_to_the_real_digits(digit_shards):
    assert {split: sum(s["sizes"].values()) for split, s in digit_shards.items()} == {"train": 1347, "test": 450}
    assert list(digit_shards["train"]["sizes"].values()) == [200] * 6 + [147]
    target_N = digits().target
    for split, summary in digit_shards.items():
        for sample in decoded(summary["shards"]):
            index = sample["json"]["digits_index"]
            assert sample["cls"] == target_N[index] and sample["json"]["split"] == split
            error_HWC = np.abs(sample["jpg"].astype(int) - expected_digit_pixels(index).astype(int))
            assert error_HWC.max() <= MAX_JPEG_ERROR and error_HWC.mean() <= MEAN_JPEG_ERROR


def test_digits_image_size_need_not_be_a_multiple_of_8():
    sample = next(iter(sources.digits_samples("train", image_size=12)))
    assert np.asarray(sample["jpg"]).shape == (12, 12, 3)
    big = np.asarray(next(iter(sources.digits_samples("train", image_size=64)))["jpg"])
    np.testing.assert_array_equal(big, expected_digit_pixels(sample["json"]["digits_index"], 64))


@pytest.mark.parametrize("kwargs, named", [
    ({"split": "val"}, "'val'"), ({"split": "train", "test_fraction": 1.0}, "test_fraction"),
    ({"split": "train", "image_size": 0}, "image_size"), ({"split": "train", "seed": "0"}, "seed"),
])
def test_digits_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        sources.digits_samples(**kwargs)


def save_image(path, pixels_HWC, format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels_HWC).save(path, format=format, **({"quality": 95} if format == "JPEG" else {}))


def gradient(seed: int, size: int = 16) -> np.ndarray:
    """A smooth RGB image, distinct per seed."""
    ramp = np.linspace(0, 1, size)
    base = np.array([37 * seed % 256, 91 * seed % 256, 53 * seed % 256], dtype=float)
    return np.clip(base + 120 * ramp[:, None, None] + 60 * ramp[None, :, None], 0, 255).astype(np.uint8)


@pytest.fixture
def caption_folder(tmp_path):
    """b.png and c.jpg at the top, sub/a.jpg below, each with a caption; plus a hidden and a non-image file."""
    folder = tmp_path / "images"
    save_image(folder / "b.png", gradient(1), "PNG")
    save_image(folder / "c.jpg", gradient(2), "JPEG")
    save_image(folder / "sub" / "a.jpg", gradient(3), "JPEG")
    save_image(folder / ".hidden" / "x.jpg", gradient(4), "JPEG")
    for stem, caption in [("b", "a bee"), ("c", "a sea\n"), ("sub/a", "an ant")]:
        (folder / f"{stem}.txt").write_text(caption)
    (folder / "readme.md").write_text("not an image")
    return folder


def test_folder_with_captions_round_trips(caption_folder, tmp_path):
    source = sources.folder_samples(caption_folder)
    summary = write_shards(source, tmp_path / "out", samples_per_shard=2)
    got = decoded(summary["shards"])
    assert [(s["__key__"], s["json"]["path"], s["txt"]) for s in got] == [
        ("000000000", "b.png", "a bee"), ("000000001", "c.jpg", "a sea"), ("000000002", "sub/a.jpg", "an ant")]
    assert summary["sizes"] == {"000000.tar": 2, "000001.tar": 1}
    raw = {s["__key__"]: s["jpg"] for s in source}
    assert raw["000000001"] == (caption_folder / "c.jpg").read_bytes()  # JPEG passed through untouched
    for sample, seed in zip(got, [1, 2, 3]):
        error_HWC = np.abs(sample["jpg"].astype(int) - gradient(seed).astype(int))
        assert error_HWC.max() <= MAX_JPEG_ERROR and error_HWC.mean() <= MEAN_JPEG_ERROR


def test_folder_with_class_subfolders_gives_sorted_labels(tmp_path):
    for class_name, seeds in [("dog", [5, 6]), ("cat", [7])]:
        for seed in seeds:
            save_image(tmp_path / "classes" / class_name / f"img{seed}.png", gradient(seed), "PNG")
    got = list(sources.folder_samples(tmp_path / "classes", captions="labels_from_subfolders"))
    assert [(s["cls"], s["json"]["classname"], s["json"]["path"]) for s in got] == [
        (0, "cat", "cat/img7.png"), (1, "dog", "dog/img5.png"), (1, "dog", "dog/img6.png")]
    assert all("txt" not in s for s in got)


def test_folder_bad_image_raises_by_name_or_is_skipped_and_counted(caption_folder):
    (caption_folder / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (caption_folder / "broken.txt").write_text("broken")
    with pytest.raises(ValueError, match="broken.jpg"):
        list(sources.folder_samples(caption_folder))
    source = sources.folder_samples(caption_folder, on_bad_image="skip")
    keys = [s["__key__"] for s in source]
    assert keys == ["000000000", "000000002", "000000003"]  # broken.jpg sorts second; others keep their keys
    assert [p.endswith("broken.jpg") for p in source.skipped] == [True]


def test_folder_errors_name_the_value(caption_folder, tmp_path):
    with pytest.raises(ValueError, match="'nowhere'"):
        sources.folder_samples("nowhere")
    with pytest.raises(ValueError, match="'words'"):
        sources.folder_samples(caption_folder, captions="words")
    (caption_folder / "b.txt").unlink()
    with pytest.raises(ValueError, match="b.png.*b.txt"):
        list(sources.folder_samples(caption_folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        sources.folder_samples(tmp_path / "empty")


def write_table(folder, suffix, rows):
    path = folder / f"table{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        columns = list(rows[0])
        path.write_text(",".join(columns) + "\n" + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_table_round_trips_with_relative_paths(tmp_path, suffix):
    save_image(tmp_path / "pics" / "x.png", gradient(8), "PNG")
    save_image(tmp_path / "pics" / "y.jpg", gradient(9), "JPEG")
    rows = [{"path": "pics/y.jpg", "caption": "why", "label": 4, "source": "s1"},
            {"path": "pics/x.png", "caption": "ex", "label": 2, "source": "s2"}]
    table = write_table(tmp_path, suffix, rows)
    got = decoded(write_shards(sources.table_samples(table), tmp_path / "out")["shards"])
    assert [(s["__key__"], s["txt"], s["cls"], s["json"]) for s in got] == [
        ("000000000", "why", 4, {"path": "pics/y.jpg", "source": "s1"}),
        ("000000001", "ex", 2, {"path": "pics/x.png", "source": "s2"})]
    for sample, seed in zip(got, [9, 8]):
        assert np.abs(sample["jpg"].astype(int) - gradient(seed).astype(int)).mean() <= MEAN_JPEG_ERROR


def test_table_missing_image_raises_or_is_skipped(tmp_path):
    save_image(tmp_path / "ok.png", gradient(1), "PNG")
    table = write_table(tmp_path, ".csv", [{"path": "gone.png", "label": 1}, {"path": "ok.png", "label": 0}])
    with pytest.raises(ValueError, match="gone.png"):
        list(sources.table_samples(table))
    source = sources.table_samples(table, on_bad_image="skip")
    assert [(s["__key__"], s["cls"]) for s in source] == [("000000001", 0)]
    assert len(source.skipped) == 1 and source.skipped[0].endswith("gone.png")


@pytest.mark.parametrize("rows, named", [
    ([{"path": "a.png", "label": "cat"}], "'cat'"),
    ([{"path": "a.png", "words": "x"}], "'caption' or 'label'"),
    ([{"file": "a.png", "caption": "x"}], "'path'"),
])
def test_table_bad_rows_are_named(tmp_path, rows, named):
    with pytest.raises(ValueError, match=named):
        sources.table_samples(write_table(tmp_path, ".jsonl", rows))


def test_table_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="table.tsv"):
        sources.table_samples(tmp_path / "table.tsv")
    with pytest.raises(ValueError, match="missing.csv"):
        sources.table_samples(tmp_path / "missing.csv")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        sources.table_samples(tmp_path / "bad.jsonl")


def test_small_digit_shards_fixture_keeps_the_first_samples(small_digit_shards):
    for split, summary in small_digit_shards.items():
        assert list(summary["sizes"].values()) == [16, 16, 16, 2]  # 50 = 3 * 16 + 2
        expected_keys = [s["__key__"] for s in sources.digits_samples(split)][:50]
        assert [s["__key__"] for s in decoded(summary["shards"])] == expected_keys

"""`dmlscale shards` driven through dmlscale.cli.main: real shards on disk, clear errors naming the value."""

import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dmlscale import cli


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(["shards", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_digits_command_writes_train_and_test(tmp_path, capsys):
    code, out, _ = run(["--source", "digits", "--output", str(tmp_path), "--samples-per-shard", "500",
                        "--image-size", "16", "--seed", "3"], capsys)
    assert code == 0
    train = json.loads((tmp_path / "train" / "sizes.json").read_text())
    test = json.loads((tmp_path / "test" / "sizes.json").read_text())
    assert list(train.values()) == [500, 500, 347] and list(test.values()) == [450]
    assert "1347 samples in 3 shards" in out and "450 samples in 1 shards" in out
    first = next(iter(wds.WebDataset(str(tmp_path / "test" / "000000.tar"), shardshuffle=False).decode("rgb8")))
    assert first["jpg"].shape == (16, 16, 3)


def test_folder_and_table_commands(tmp_path, capsys):
    for name, value in [("a", 40), ("b", 200)]:
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"grey {value}")
    code, out, _ = run(["--source", "folder", "--input", str(tmp_path), "--output", str(tmp_path / "f"),
                        "--prefix", "img-"], capsys)
    assert code == 0 and "2 samples in 1 shards" in out
    got = list(wds.WebDataset(str(tmp_path / "f" / "img-000000.tar"), shardshuffle=False).decode("rgb8"))
    assert [s["txt"] for s in got] == ["grey 40", "grey 200"]
    assert [int(np.rint(s["jpg"].mean())) for s in got] == [40, 200]

    (tmp_path / "t.csv").write_text("path,label\nb.png,1\na.png,0\n")
    code, out, _ = run(["--source", "table", "--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "t")],
                       capsys)
    assert code == 0
    got = list(wds.WebDataset(str(tmp_path / "t" / "000000.tar"), shardshuffle=False).decode())
    assert [(s["cls"], s["json"]["path"]) for s in got] == [(1, "b.png"), (0, "a.png")]


def test_bad_image_fails_by_name_unless_skipped(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "zbad.png").write_bytes(b"\x89PNG truncated")
    for stem in ("good", "zbad"):
        (tmp_path / f"{stem}.txt").write_text(stem)
    argv = ["--source", "folder", "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "zbad.png" in err
    code, out, _ = run([*argv, "--skip-bad-images"], capsys)
    assert code == 0 and "1 samples in 1 shards" in out and "skipped 1 unreadable images" in out
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"000000.tar": 1}


@pytest.mark.parametrize("argv, named", [
    (["--source", "parquet", "--output", "o"], "'parquet'"),
    (["--source", "folder", "--input", "no_such_folder", "--output", "o"], "'no_such_folder'"),
    (["--source", "table", "--input", "no_such.csv", "--output", "o"], "'no_such.csv'"),
    (["--source", "folder", "--output", "o"], "--input"),
    (["--source", "digits", "--input", "x", "--output", "o"], "'x'"),
    (["--source", "digits", "--output", "o", "--samples-per-shard", "0"], "samples_per_shard"),
])
def test_bad_arguments_give_exit_code_2_naming_the_value(tmp_path, monkeypatch, capsys, argv, named):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and named in err


def digit_png_folder(root, counts: dict[int, int]):
    """Real digits as PNGs in class subfolders (digit_<label>/<index>.png), `counts[label]` of each."""
    from sklearn.datasets import load_digits

    digits, taken = load_digits(), dict.fromkeys(counts, 0)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        if taken.get(int(label), counts.get(int(label), 0)) >= counts.get(int(label), 0):
            continue
        taken[int(label)] += 1
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype("uint8")).save(folder / f"{index:04d}.png")
    return root


def read_split(folder) -> list[tuple[str, int, str]]:
    """(key, label, relative image path) of every sample in the folder's shards, read with webdataset."""
    samples = []
    for shard in sorted(folder.glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False).decode():
            samples.append((sample["__key__"], sample["cls"], sample["json"]["path"]))
    return samples


def test_folder_test_fraction_writes_a_disjoint_stratified_deterministic_split(tmp_path, capsys):
    counts = {0: 10, 3: 7, 5: 5}
    images = digit_png_folder(tmp_path / "images", counts)
    argv = ["--source", "folder", "--input", str(images), "--captions", "labels_from_subfolders",
            "--test-fraction", "0.2", "--samples-per-shard", "4"]
    code, out, _ = run([*argv, "--output", str(tmp_path / "a")], capsys)
    assert code == 0 and "train: 18 samples in 5 shards" in out and "test: 4 samples in 1 shards" in out
    train, test = read_split(tmp_path / "a" / "train"), read_split(tmp_path / "a" / "test")
    # per class round(0.2 * n) to test: 2 of 10, 1 of 7, 1 of 5; labels number the sorted subfolders
    assert sorted(label for _, label, _ in test) == [0, 0, 1, 2]
    assert sorted(label for _, label, _ in train) == [0] * 8 + [1] * 6 + [2] * 4
    assert {key for key, _, _ in train}.isdisjoint(key for key, _, _ in test)
    every = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert sorted(path for _, _, path in train + test) == every
    assert json.loads((tmp_path / "a" / "test" / "sizes.json").read_text()) == {"000000.tar": 4}

    # the same seed gives the same split, byte for byte; another seed another test set of the same sizes
    assert run([*argv, "--output", str(tmp_path / "b")], capsys)[0] == 0
    for split in ("train", "test"):
        for shard in (tmp_path / "a" / split).glob("*.tar"):
            assert shard.read_bytes() == (tmp_path / "b" / split / shard.name).read_bytes()
    assert run([*argv, "--seed", "1", "--output", str(tmp_path / "c")], capsys)[0] == 0
    other = read_split(tmp_path / "c" / "test")
    assert sorted(label for _, label, _ in other) == [0, 0, 1, 2] and set(other) != set(test)


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2", "nan"])
def test_bad_test_fraction_is_named_and_writes_nothing(tmp_path, capsys, fraction):
    images = digit_png_folder(tmp_path / "images", {1: 3, 2: 3})
    code, _, err = run(["--source", "folder", "--input", str(images), "--captions", "labels_from_subfolders",
                        "--test-fraction", fraction, "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("dmlscale shards: error: --test-fraction must be a number in (0, 1)")
    assert err.strip().endswith(f"got {float(fraction)}") and not (tmp_path / "out").exists()


def test_a_test_fraction_that_empties_a_split_is_named(tmp_path, capsys):
    images = digit_png_folder(tmp_path / "images", {1: 2, 2: 2})
    code, _, err = run(["--source", "folder", "--input", str(images), "--captions", "labels_from_subfolders",
                        "--test-fraction", "0.1", "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "--test-fraction 0.1: test_fraction=0.1 of 4 items leaves 4 for train and 0 for test" in err


def test_split_source_in_python_for_unlabelled_captions(tmp_path):
    from dmlscale.data import folder_samples

    for index in range(10):
        Image.fromarray(np.full((8, 8, 3), 20 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
        (tmp_path / f"{index}.txt").write_text(f"grey {20 * index}")
    train, test = folder_samples(tmp_path).split(0.3, seed=0)
    assert len(train) == 7 and len(test) == 3
    keys = [s["__key__"] for s in train] + [s["__key__"] for s in test]
    assert sorted(keys) == [f"{i:09d}" for i in range(10)]
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\), got 2"):
        folder_samples(tmp_path).split(2)


def test_table_test_fraction_splits_by_its_label_column(tmp_path, capsys):
    rows = ["path,label"]
    for index in range(12):
        Image.fromarray(np.full((8, 8, 3), 10 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
        rows.append(f"{index}.png,{index % 2}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    code, out, _ = run(["--source", "table", "--input", str(tmp_path / "t.csv"), "--test-fraction", "0.5",
                        "--output", str(tmp_path / "t")], capsys)
    assert code == 0 and "train: 6 samples" in out and "test: 6 samples" in out
    assert sorted(label for _, label, _ in read_split(tmp_path / "t" / "test")) == [0, 0, 0, 1, 1, 1]

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

"""write_shards: real tar shards read back with tarfile and with webdataset, reproducibility and safe re-runs.

PIL images are stored as JPEG (quality 95, no chroma subsampling), so decoded pixels match the intended
ones within JPEG error: quality 95 quantises DCT coefficients in steps of 2-12 levels, so a sharp colour
edge may be off by a few steps (allowed: 24 of 255; worst seen on these random colour blocks: 15) while
the image on average stays within 4 levels (worst seen 2.2; a different block image is off by >= 66). Images given as bytes are stored byte for byte.
"""

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dmlscale.data.shards import write_shards

MAX_JPEG_ERROR, MEAN_JPEG_ERROR = 24, 4.0


def block_image(index: int, size: int = 16) -> np.ndarray:
    """A size x size RGB image of 4x4 coloured blocks, different for every index (smooth enough for JPEG)."""
    rng = np.random.default_rng(index)
    grid_44C = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(grid_44C, size // 4, axis=0), size // 4, axis=1)


def make_samples(num_samples: int) -> list[dict]:
    """Mixed samples: PIL images and pre-encoded JPEG bytes, unicode captions, some without txt or cls."""
    samples = []
    for i in range(num_samples):
        sample = {"__key__": f"sample{i:03d}", "json": {"index": i, "name": f"n{i}"}}
        image = Image.fromarray(block_image(i))
        if i % 3 == 0:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            sample["jpg"] = buffer.getvalue()
        else:
            sample["jpg"] = image
        if i % 4 != 1:
            sample["txt"] = f"caption {i}: café ünïcode ✓"
        if i % 5 != 2:
            sample["cls"] = i % 7
        samples.append(sample)
    return samples


def read_tar_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tarfile_sees_every_member_in_order_and_sizes_json_matches(tmp_path):
    samples = make_samples(23)
    summary = write_shards(samples, tmp_path, samples_per_shard=5)

    expected_sizes = [5, 5, 5, 5, 3]  # 23 = 4 * 5 + 3: an uneven last shard
    names = [f"{i:06d}.tar" for i in range(len(expected_sizes))]
    assert summary["sizes"] == dict(zip(names, expected_sizes))
    assert json.loads((tmp_path / "sizes.json").read_text()) == dict(zip(names, expected_sizes))
    assert summary["num_samples"] == 23 and summary["shards"] == [str(tmp_path / n) for n in names]
    assert summary["num_bytes"] == sum((tmp_path / n).stat().st_size for n in names)

    members = [m for name in names for m in read_tar_members(tmp_path / name)]
    expected_names = [f"{s['__key__']}.{ext}" for s in samples for ext in ("jpg", "txt", "json", "cls") if ext in s]
    assert [name for name, _ in members] == expected_names
    payloads = dict(members)
    for s in samples:
        key = s["__key__"]
        assert json.loads(payloads[f"{key}.json"]) == s["json"]
        if "txt" in s:
            assert payloads[f"{key}.txt"].decode("utf-8") == s["txt"]
        if "cls" in s:
            assert payloads[f"{key}.cls"] == str(s["cls"]).encode()
        if isinstance(s["jpg"], bytes):
            assert payloads[f"{key}.jpg"] == s["jpg"]
    with tarfile.open(tmp_path / names[0]) as tar:
        info = tar.getmembers()[0]
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")


def test_webdataset_decodes_exactly_the_samples(tmp_path):
    samples = make_samples(23)
    summary = write_shards(samples, tmp_path, samples_per_shard=5)
    decoded = list(wds.WebDataset(summary["shards"], shardshuffle=False).decode("rgb8"))

    assert [d["__key__"] for d in decoded] == [s["__key__"] for s in samples]
    for sample, got in zip(samples, decoded):
        assert got["json"] == sample["json"]
        assert got.get("txt") == sample.get("txt")
        assert got.get("cls") == sample.get("cls")
        assert got["jpg"].shape == (16, 16, 3)
        if isinstance(sample["jpg"], bytes):  # stored as given: decodes to exactly what the bytes decode to
            np.testing.assert_array_equal(got["jpg"], np.asarray(Image.open(io.BytesIO(sample["jpg"]))))
        else:
            error_HWC = np.abs(got["jpg"].astype(int) - block_image(sample["json"]["index"]).astype(int))
            assert error_HWC.max() <= MAX_JPEG_ERROR and error_HWC.mean() <= MEAN_JPEG_ERROR


def test_prefix_and_one_shard_when_everything_fits(tmp_path):
    summary = write_shards(make_samples(4), tmp_path, samples_per_shard=1000, prefix="train-")
    assert summary["sizes"] == {"train-000000.tar": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sizes.json", "train-000000.tar",
                                                          "train-000000.tar.index.json"]  # it holds labels


def test_rerun_is_byte_identical(tmp_path):
    first = write_shards(make_samples(12), tmp_path / "a", samples_per_shard=5)
    # the same samples again, with json keys inserted in the opposite order
    again = make_samples(12)
    for s in again:
        s["json"] = dict(reversed(list(s["json"].items())))
    second = write_shards(again, tmp_path / "b", samples_per_shard=5)
    rewritten = write_shards(make_samples(12), tmp_path / "a", samples_per_shard=5)
    for a, b, c in zip(first["shards"], second["shards"], rewritten["shards"], strict=True):
        assert digest(tmp_path / "a" / a.split("/")[-1]) == digest(tmp_path / "b" / b.split("/")[-1])
        assert c == a
    assert (tmp_path / "a" / "sizes.json").read_bytes() == (tmp_path / "b" / "sizes.json").read_bytes()


def test_rerun_with_fewer_shards_removes_stale_ones_and_keeps_other_files(tmp_path):
    write_shards(make_samples(23), tmp_path, samples_per_shard=5)
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / ".000003.tar.tmp-99999").write_bytes(b"half a shard")  # left by a killed run
    summary = write_shards(make_samples(7), tmp_path, samples_per_shard=5)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.tar", "000000.tar.index.json", "000001.tar",
                                                          "000001.tar.index.json", "notes.md", "sizes.json"]
    assert summary["sizes"] == {"000000.tar": 5, "000001.tar": 2}
    assert len(list(wds.WebDataset(summary["shards"], shardshuffle=False))) == 7


def test_rerun_with_another_prefix_removes_shards_listed_in_the_old_sizes_json(tmp_path):
    write_shards(make_samples(8), tmp_path, samples_per_shard=5, prefix="old-")
    write_shards(make_samples(8), tmp_path, samples_per_shard=5, prefix="new-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new-000000.tar", "new-000000.tar.index.json",
                                                          "new-000001.tar", "new-000001.tar.index.json", "sizes.json"]


def test_interrupted_run_leaves_no_sizes_json_and_no_partial_files(tmp_path):
    write_shards(make_samples(23), tmp_path, samples_per_shard=5)

    def failing_source():
        for i, sample in enumerate(make_samples(23)):
            if i == 12:
                raise RuntimeError("source died")
            yield sample

    with pytest.raises(RuntimeError, match="source died"):
        write_shards(failing_source(), tmp_path, samples_per_shard=5)
    # sizes.json marks a complete run, so its absence says "incomplete"; every tar left is whole
    assert not (tmp_path / "sizes.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for path in sorted(tmp_path.glob("*.tar")):
        assert len(read_tar_members(path)) > 0
    summary = write_shards(make_samples(23), tmp_path, samples_per_shard=5)
    assert json.loads((tmp_path / "sizes.json").read_text()) == summary["sizes"]


@pytest.mark.parametrize("key", ["a.b", "dir/name", "", "back\\slash", 17, None])
def test_bad_key_is_rejected_by_name(tmp_path, key):
    samples = make_samples(3) + [{"__key__": key, "txt": "x"}]
    with pytest.raises(ValueError, match="__key__") as error:
        write_shards(samples, tmp_path)
    assert repr(key) in str(error.value)


@pytest.mark.parametrize("sample, named", [
    ({"__key__": "k", "png": b"x"}, "png"),
    ({"__key__": "k", "cls": "3"}, "'cls' must be int"),
    ({"__key__": "k", "cls": True}, "'cls' must be int"),
    ({"__key__": "k", "txt": b"bytes"}, "'txt' must be str"),
    ({"__key__": "k", "json": [1]}, "'json' must be dict"),
    ({"__key__": "k", "jpg": np.zeros((4, 4, 3))}, "'jpg' must be bytes or a PIL image"),
    ({"__key__": "k"}, "no data fields"),
])
def test_bad_field_is_rejected_by_name(tmp_path, sample, named):
    with pytest.raises(ValueError, match=named):
        write_shards([sample], tmp_path)


def test_duplicate_key_within_a_shard_is_rejected(tmp_path):
    samples = make_samples(3) + [{"__key__": "sample001", "txt": "again"}]
    with pytest.raises(ValueError, match="duplicate.*'sample001'"):
        write_shards(samples, tmp_path, samples_per_shard=10)


@pytest.mark.parametrize("kwargs, named", [
    ({"samples_per_shard": 0}, "samples_per_shard"),
    ({"samples_per_shard": 2.5}, "samples_per_shard"),
    ({"prefix": "a/b"}, "prefix"),
    ({"jpeg_quality": 101}, "jpeg_quality"),
])
def test_bad_argument_is_rejected_by_name(tmp_path, kwargs, named):
    with pytest.raises(ValueError, match=named):
        write_shards(make_samples(2), tmp_path, **kwargs)


def test_empty_source_and_file_as_output_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        write_shards([], tmp_path / "out")
    # an empty or invalid source fails before an existing complete output is touched
    complete = write_shards(make_samples(7), tmp_path / "done", samples_per_shard=5)
    before = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    for bad_source in ([], [{"__key__": "x.y", "txt": "bad key"}]):
        with pytest.raises(ValueError):
            write_shards(bad_source, tmp_path / "done", samples_per_shard=5)
        assert {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()} == before
    assert json.loads(before["sizes.json"]) == complete["sizes"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        write_shards(make_samples(1), tmp_path / "file")


def test_progress_bar_counts_samples(tmp_path, capsys):
    write_shards(make_samples(6), tmp_path, samples_per_shard=4, progress=True)
    assert "6/6" in capsys.readouterr().err


def test_importing_dmlscale_data_stays_light():
    code = ("import sys, dmlscale.data as data; heavy = [m for m in ('PIL', 'sklearn', 'webdataset', 'torch') "
            "if m in sys.modules]; assert not heavy, heavy; assert all(getattr(data, n) is not None for n in data.__all__)")
    subprocess.run([sys.executable, "-c", code], check=True)

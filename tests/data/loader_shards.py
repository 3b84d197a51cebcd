"""Shard sets for the loader tests: uneven, empty and dirty tars of real digits.

Clean shards come from the project's writer; the dirty ones are assembled member by member with
tarfile, since the writer refuses to write broken data.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

from dmlscale.data.shards import encode_sample, write_shards
from dmlscale.data.sources import digits_samples


def _samples(split: str, start: int, stop: int) -> list[dict]:
    return list(itertools.islice(digits_samples(split, image_size=16), start, stop))


def write_uneven_shards(root: Path) -> dict:
    """Three sources: A (300 train digits: 64, 64, 64, 64, 44), B (100 test digits: 23 x 4 + 8) and C
    (an empty tar and one of 3 samples, without sizes.json, so their sizes are counted).
    Returns {"pattern", "sources", "keys": {source: [keys]}}."""
    a = write_shards(_samples("train", 0, 300), root / "a", samples_per_shard=64)
    b = write_shards(_samples("test", 0, 100), root / "b", samples_per_shard=23)
    tiny = _samples("test", 100, 103)
    write_tar(root / "c" / "tiny.tar", [encode_sample(s)[1] for s in tiny])
    write_tar(root / "c" / "empty.tar", [])
    sources = {"a": f"{root}/a/{{000000..000004}}.tar", "b": f"{root}/b/{{000000..000004}}.tar",
               "c": f"{root}/c/{{empty,tiny}}.tar"}
    assert sorted(a["sizes"].values()) == [44, 64, 64, 64, 64] and sorted(b["sizes"].values()) == [8, 23, 23, 23, 23]
    keys = {"a": [s["__key__"] for s in _samples("train", 0, 300)],
            "b": [s["__key__"] for s in _samples("test", 0, 100)], "c": [s["__key__"] for s in tiny]}
    return {"pattern": "::".join(sources.values()), "sources": sources, "keys": keys}


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> Path:
    """A tar of the given samples' (member name, bytes) lists, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for members in samples:
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def png_bomb(side: int) -> bytes:
    """A tiny PNG file that decodes to side x side pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def member_end_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(member name, header offset, end of data) of every member, from tarfile."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data + m.size) for m in tar.getmembers()]


def write_dirty_shards(root: Path) -> dict:
    """Four dirty shards plus sizes.json (listing the truncated ones at their original sizes).

    Returns {"pattern", "clean_keys", "bad": {reason: number of bad samples}, "shards": [paths]}."""
    clean = _samples("train", 0, 40)
    members = {s["__key__"]: encode_sample(s)[1] for s in clean}
    keys = list(members)
    bad, clean_keys = {}, set()

    def take(count):
        chosen = [keys.pop(0) for _ in range(count)]
        return chosen

    # d0: a non-image .jpg, a missing caption, an oversized image, a key repeated inside the tar
    d0_keys = take(8)
    d0 = [members[k] for k in d0_keys]
    d0[1] = [(f"{d0_keys[1]}.jpg", b"this is not a jpeg"), d0[1][1]]
    d0[3] = [m for m in d0[3] if not m[0].endswith(".txt")]
    d0[5] = [(f"{d0_keys[5]}.png", png_bomb(1500)), d0[5][1]]
    d0.append(members[d0_keys[6]])  # a second sample with key d0_keys[6], far from the first
    clean_keys |= {k for i, k in enumerate(d0_keys) if i not in (1, 3, 5)}
    bad.update({"bad image": 1, "missing caption": 1, "oversized image": 1, "duplicate key": 1})
    # d1 ends with the image of a sample whose caption opens d2: the key straddles the boundary
    d1_keys, split_key, d2_keys = take(6), take(1)[0], take(6)
    split_jpg = [m for m in members[split_key] if m[0].endswith(".jpg")]
    split_rest = [m for m in members[split_key] if not m[0].endswith(".jpg")]
    d1 = [members[k] for k in d1_keys] + [split_jpg]
    d2 = [split_rest] + [members[k] for k in d2_keys]
    clean_keys |= set(d1_keys) | set(d2_keys)
    bad["missing caption"] += 1
    bad["missing image"] = 1
    # d3: cut in the middle of sample 6's image data; d4: cut inside the header of sample 4's caption
    d3_keys, d4_keys = take(10), take(9)
    paths = [write_tar(root / f"d{i}.tar", s) for i, s in enumerate([d0, d1, d2, [members[k] for k in d3_keys],
                                                                     [members[k] for k in d4_keys]])]
    offsets3, offsets4 = member_end_offsets(paths[3]), member_end_offsets(paths[4])
    jpg6 = next(o for o in offsets3 if o[0] == f"{d3_keys[6]}.jpg")
    txt4 = next(o for o in offsets4 if o[0] == f"{d4_keys[4]}.txt")
    cuts = {3: (jpg6[1] + 512 + jpg6[2]) // 2, 4: txt4[1] + 100}
    for index, cut in cuts.items():
        data = paths[index].read_bytes()
        paths[index].write_bytes(data[:cut])
        offsets = offsets3 if index == 3 else offsets4
        lost = {name.split(".")[0] for name, header, end in offsets if end > cut or header + 512 > cut}
        shard_keys = d3_keys if index == 3 else d4_keys
        clean_keys |= set(shard_keys) - lost
        bad["truncated tar"] = bad.get("truncated tar", 0) + len(lost)
    sizes = {"d0.tar": len(d0), "d1.tar": len(d1), "d2.tar": len(d2), "d3.tar": 10, "d4.tar": 9}
    (root / "sizes.json").write_text(json.dumps(sizes))
    return {"pattern": f"{root}/d{{0..4}}.tar", "clean_keys": clean_keys, "bad": bad,
            "shards": [str(p) for p in paths], "num_planned": sum(sizes.values())}

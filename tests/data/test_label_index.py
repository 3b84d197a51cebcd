"""Label indexes of real shards: the writer's index against tarfile's own reading of the tar, the scan of a
tar without an index (cached next to it), a stale index re-scanned, a truncated tar, and span reads."""

import json
import logging
import os
import tarfile

from dmlscale.data.label_index import index_path, load_index, read_index, scan_shard
from dmlscale.data.shards import write_shards
from dmlscale.data.span_reader import STALE_INDEX, read_span
from dmlscale.data.tar_reader import TRUNCATED
from tests.data.loader_shards import _samples


def labelled(count: int, *, unlabelled=()) -> list[dict]:
    """Real digits (16 x 16) with their labels; samples at `unlabelled` positions lose their .cls."""
    samples = _samples("train", 0, count)
    for position in unlabelled:
        del samples[position]["cls"]
    return samples


def tarfile_view(path) -> dict:
    """key -> (label or None, first header byte, end of the last member's padded data), from tarfile."""
    view = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key = member.name.split(".")[0]
            end = member.offset_data + (member.size + 511) // 512 * 512
            label, start, _ = view.get(key, (None, member.offset, None))
            if member.name.endswith(".cls"):
                label = int(tar.extractfile(member).read())
            view[key] = (label, start, end)
    return view


def test_writer_index_matches_tarfile_and_a_scan(tmp_path):
    summary = write_shards(labelled(30, unlabelled=(4,)), tmp_path, samples_per_shard=12)
    for shard in summary["shards"]:
        saved = json.loads(open(index_path(shard)).read())
        view = tarfile_view(shard)
        assert saved["tar_bytes"] == os.path.getsize(shard) and saved["keys"] == list(view)
        assert [[label, [start, end]] for label, start, end in view.values()] == \
            [[label, span] for label, span in zip(saved["labels"], saved["spans"])]
        assert scan_shard(shard).as_dict() == saved  # a scan of the tar finds what the writer wrote
    assert json.loads(open(index_path(summary["shards"][0])).read())["labels"][4] is None  # no .cls
    for shard in summary["shards"]:  # each span reads back exactly that sample's members
        index = read_index(shard)
        with open(shard, "rb") as handle, tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for key, span in zip(index.keys, index.spans):
                got_key, fields, problem = read_span(handle, *span)
                assert problem is None and got_key == key
                assert fields == {name.split(".", 1)[1]: data for name, data in members.items()
                                  if name.split(".")[0] == key}


def test_no_index_for_shards_without_labels(tmp_path):
    summary = write_shards(labelled(5, unlabelled=range(5)), tmp_path, samples_per_shard=5)
    assert not os.path.exists(index_path(summary["shards"][0]))


def test_missing_index_is_scanned_and_cached_and_a_stale_one_rescanned(tmp_path, caplog):
    shard = write_shards(labelled(10), tmp_path, samples_per_shard=10)["shards"][0]
    written = open(index_path(shard)).read()
    os.remove(index_path(shard))
    assert load_index(shard).as_dict() == json.loads(written)
    assert json.loads(open(index_path(shard)).read()) == json.loads(written)  # cached

    data = open(shard, "rb").read()
    spans = json.loads(written)["spans"]
    cut = (spans[6][0] + spans[6][1]) // 2  # inside sample 6
    open(shard, "wb").write(data[:cut])
    with caplog.at_level(logging.WARNING, logger="dmlscale.data"):
        index = load_index(shard, cache=False)
    assert f"describes a tar of {len(data)} bytes, the file has {cut}" in caplog.text
    assert index.keys[:6] == json.loads(written)["keys"][:6]
    assert index.labels[:6] == json.loads(written)["labels"][:6] and set(index.labels[6:]) <= {None}
    with open(shard, "rb") as handle:
        assert read_span(handle, *spans[7])[2] == TRUNCATED  # the old span now runs past the end
        assert read_span(handle, spans[0][0] + 512, spans[0][1])[2] == STALE_INDEX  # not a sample's start

"""train/build.py's shard listing and training loader: a folder's sizes.json is checked against the
disk, and the training loader leaves the skip check to the trainer's global one."""

from __future__ import annotations

import json

import pytest

from dmlscale.data.shards import write_shards
from dmlscale.data.sources import digits_samples
from dmlscale.train.build import make_train_loader, split_shards
from dmlscale.train.config import Config, DataConfig


@pytest.fixture
def root(tmp_path):
    samples = [s for _, s in zip(range(48), digits_samples("train", image_size=8))]
    for split in ("train", "test"):
        write_shards(samples, tmp_path / split, samples_per_shard=16)
    return tmp_path


def test_a_listed_shard_absent_on_disk_is_named_or_kept_as_skips(root):
    (root / "train" / "000001.tar").unlink()
    (root / "test" / "000001.tar").unlink()
    with pytest.raises(ValueError, match=r"lists 1 shards absent on disk: \[.*train/000001.tar'\].*missing_shards"):
        split_shards(DataConfig(source="shards", root=str(root)), "train")
    skip = DataConfig(source="shards", root=str(root), missing_shards="skip")
    assert split_shards(skip, "train") == [str(root / "train" / f"00000{i}.tar") for i in range(3)]
    assert split_shards(skip, "test") == [str(root / "test" / f"00000{i}.tar") for i in (0, 2)]  # eval: left out
    explicit = DataConfig(source="shards", root=str(root), train_shards=str(root / "train" / "{000000..000002}.tar"))
    assert split_shards(explicit, "train") == [explicit.train_shards]  # patterns are checked by list_shards


def test_an_unlisted_tar_in_the_folder_is_still_read(root):
    (root / "train" / "sizes.json").write_text(json.dumps({"000000.tar": 16}))
    paths = split_shards(DataConfig(source="shards", root=str(root)), "train")
    assert len(paths) == 3


def test_the_training_loader_takes_the_data_limits_and_leaves_the_check_to_the_trainer(root):
    (root / "train" / "000002.tar").write_bytes(b"not a tar" * 100)
    config = Config(data=DataConfig(source="shards", root=str(root), batch_size=4, task="image_label",
                                    max_skip_fraction=0.01, skip_check_after=1, missing_shards="skip"),
                    loss={"name": "triplet"})
    loader = make_train_loader(config, 0, 1, None, None, 0)
    stream = loader.config
    assert (stream.max_skip_fraction, stream.skip_check_after, stream.local_skip_check) == (0.01, 1, False)
    keys = [key for batch in loader for key in batch["key"]]  # a third unusable: no local stop
    assert len(keys) == 48 and loader.skipped == {"not a tar": 16}
    config.data.missing_shards = "error"
    with pytest.raises(ValueError, match="000002.tar.*is not a tar"):
        make_train_loader(config, 0, 1, None, None, 0)

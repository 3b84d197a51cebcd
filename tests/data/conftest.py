"""Shard fixtures built with the project's own writer from real handwritten digits."""

import pytest

from dmlscale.data.digits import write_digits_shards


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory) -> dict[str, dict]:
    """All 1797 digits (seed 0, 32x32): {"train": summary, "test": summary} of write_shards, 200 samples
    per shard, so train has 7 shards (the last with 147) and test 3 (the last with 50). ~1.5 s, once."""
    return write_digits_shards(tmp_path_factory.mktemp("digit_shards"), samples_per_shard=200)


@pytest.fixture
def small_digit_shards(tmp_path) -> dict[str, dict]:
    """The first 50 samples of each split in shards of 16 (4 shards, the last with 2). ~0.1 s."""
    return write_digits_shards(tmp_path / "digits", samples_per_shard=16, max_samples_per_split=50)

"""Shared fixture: the real digits shards, written once per test session with `dmlscale shards`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    from dmlscale.cli import main as cli_main

    root = tmp_path_factory.mktemp("digits")
    # several shards per split, so that 2-4 ranks read different shards
    code = cli_main(["shards", "--source", "digits", "--output", str(root), "--samples-per-shard", "300",
                     "--no-progress"])
    assert code == 0
    return root

"""Rank-0 progress bar: shows the count, rate and ETA; other ranks print nothing."""

import io
import re

import pytest

from dmlscale.monitor import Progress, track


def test_progress_shows_count_rate_eta_and_postfix():
    out = io.StringIO()
    with Progress(10, desc="train", unit="step", file=out, min_interval_s=0) as bar:
        for _ in range(4):
            bar.update(1, loss=0.123456, lr=1e-3)
        assert bar.count == 4
    text = out.getvalue()
    assert "train" in text and "4/10" in text
    assert re.search(r"\d+(\.\d+)?(step/s|s/step)", text)  # the rate
    assert re.search(r"<\d\d:\d\d", text)  # the ETA (time left)
    assert "loss=0.1235" in text


def test_resumed_bar_starts_at_the_checkpoint_step():
    out = io.StringIO()
    with Progress(100, desc="train", initial=40, file=out, min_interval_s=0) as bar:
        bar.update(2)
        assert bar.count == 42
    assert "42/100" in out.getvalue()


def test_other_ranks_and_disabled_bars_print_nothing():
    out = io.StringIO()
    for bar in (Progress(5, desc="eval", rank=1, file=out), Progress(5, desc="eval", enabled=False, file=out)):
        bar.update(3, loss=1.0)
        bar.write("hello")
        assert not bar.active and bar.count is None
        bar.close()
    assert out.getvalue() == ""
    assert list(track(range(3), desc="shards", rank=1, file=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_track_counts_every_item_and_bad_totals_raise():
    out = io.StringIO()
    assert list(track(["a", "b", "c"], desc="shards", unit="shard", file=out)) == ["a", "b", "c"]
    assert "3/3" in out.getvalue()
    with pytest.raises(ValueError, match="-1"):
        Progress(-1, desc="x")

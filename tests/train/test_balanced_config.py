"""data.m_per_class: off by default, and a value the class-balanced loader could not honour is refused by name
when the config loads, before anything is built."""

from __future__ import annotations

import pytest

from dmlscale.train.config import load_config
from dmlscale.train.train_cli import resolve_config_path

RECIPE = resolve_config_path("metric_learning_digits")


def test_default_is_off_and_a_divisor_loads():
    assert load_config(RECIPE).data.m_per_class == 0
    assert load_config(RECIPE, ["data.m_per_class=16"]).data.m_per_class == 16


@pytest.mark.parametrize("overrides, message", [
    (["data.m_per_class=3"], r"data.m_per_class must be a divisor of data.batch_size=128, got 3"),
    (["data.m_per_class=-2"], r"data.m_per_class must be an int >= 0 \(0: off\), got -2"),
    (["data.m_per_class=2.5"], r"data.m_per_class must be an int, got 2.5"),
    (["data.m_per_class=4", "data.task=image_text", "loss.name=ClipLoss", "loss.options={}", "loss.miner=null"],
     r"data.m_per_class must be 0 with data.task='image_text'"),
])
def test_bad_values_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(RECIPE, overrides)

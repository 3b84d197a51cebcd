"""Which config changes a resume applies, re-plans or refuses (the trainer's integration tests cover the rest)."""

from __future__ import annotations

import pytest

from dmlscale.train.config import load_config
from dmlscale.train.resume_guard import compare


def config_dict(*overrides: str) -> dict:
    return load_config(None, list(overrides)).to_dict()


def test_learning_rate_and_schedule_length_are_applied():
    changes = compare(config_dict(), config_dict("optim.lr=1e-4", "train.steps=600", "eval.every=50"),
                      saved_world_size=2, world_size=2, tag="step_00000010")
    assert changes.applied == {"optim.lr": (1e-3, 1e-4), "train.steps": (300, 600)}
    assert changes.relayout == {} and "eval.every" in changes.free
    assert any("optim.lr changed from 0.001 to 0.0001: applied" in line for line in changes.describe())


def test_world_size_and_batch_size_changes_re_plan():
    changes = compare(config_dict("data.batch_size=64"), config_dict("data.batch_size=128"), saved_world_size=2,
                      world_size=1, tag="t")
    assert changes.relayout == {"data.batch_size": (64, 128), "world_size": (2, 1)}


@pytest.mark.parametrize("override, name", [("seed=3", "seed"), ("model.name=dml-tiny-rn", "model.name"),
                                            ("loss.options.tiled=true", "loss.options.tiled"),
                                            ("optim.betas=[0.9, 0.95]", "optim.betas")])
def test_other_changes_are_refused_by_name_with_both_values(override, name):
    with pytest.raises(ValueError, match=rf"cannot resume checkpoint 'step_00000007': {name} \(checkpoint: .*, now: "):
        compare(config_dict(), config_dict(override), saved_world_size=1, world_size=1, tag="step_00000007")

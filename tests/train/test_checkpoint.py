"""Save, resume from `latest`, continue: the weights equal an uninterrupted run (2 gloo ranks, DeepSpeed).

The model has patch dropout, so the resumed run matches only if the RNG states come back too; the
fresh engine starts from other random weights, so it matches only if the checkpoint loads.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from dmlscale.distributed import DistributedClipLoss
from dmlscale.train import checkpoint
from dmlscale.train.engine import build_engine, engine_contrastive_step
from dmlscale.train.export import export_weights
from tests.distributed.launch import results, run_world
from tests.train.helpers import MICRO_BATCH, batch_source, clip_forward, clip_loss_fn, full_params, tiny_clip

NUM_CHUNKS = 2
TOTAL_STEPS = 4
SAVE_AT = 2


def _engine(zero_stage: int, seed: int):
    return build_engine(tiny_clip(seed), zero_stage=zero_stage, precision="fp32", lr=1e-3, weight_decay=0.1,
                        gradient_clipping=1.0, warmup_steps=1, total_steps=TOTAL_STEPS + 2,
                        micro_batch_size=MICRO_BATCH, grad_accum_steps=NUM_CHUNKS)


def _train(engine, rank: int, steps: range) -> list[float]:
    loss_fn = clip_loss_fn(DistributedClipLoss())
    return [engine_contrastive_step(engine, batch_source(step, rank, NUM_CHUNKS), clip_forward(engine), loss_fn).item()
            for step in steps]


def _save_resume_worker(rank, world_size, run_dir, zero_stage):
    torch.manual_seed(rank)
    uninterrupted = _engine(zero_stage, seed=0)
    _train(uninterrupted, rank, range(TOTAL_STEPS))
    want = full_params(uninterrupted)
    want_lr = uninterrupted.get_lr()[0]

    torch.manual_seed(rank)
    first = _engine(zero_stage, seed=0)
    _train(first, rank, range(SAVE_AT))
    stream_state = {"shard": 7 + rank, "offset": 11, "epoch": 0}
    checkpoint.save(first, run_dir, SAVE_AT, {"data": stream_state}, run_id="run-abc")
    saved = full_params(first)
    pointer_after_save = (run_dir / checkpoint.LATEST).read_text()

    torch.manual_seed(999)  # scramble the RNG; load must bring back the saved states
    resumed = _engine(zero_stage, seed=1)  # other initial weights; load must overwrite them
    different_before_load = max((p - want[n]).abs().max().item() for n, p in full_params(resumed).items())
    state = checkpoint.load(resumed, run_dir)
    _train(resumed, rank, range(state["step"], TOTAL_STEPS))
    got = full_params(resumed)
    max_diff = max((got[name] - want[name]).abs().max().item() for name in want)
    return {"max_diff": max_diff, "different_before_load": different_before_load, "state": state,
            "pointer": pointer_after_save, "lr": (resumed.get_lr()[0], want_lr),
            "saved": saved}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_resume_from_latest_equals_uninterrupted_run(tmp_path, zero_stage):
    outcomes = results(run_world(_save_resume_worker, 2, tmp_path, zero_stage))
    print("max |resumed - uninterrupted|:", [o["max_diff"] for o in outcomes])
    for rank, outcome in enumerate(outcomes):
        assert outcome["different_before_load"] > 1e-3  # the fresh engine really started elsewhere
        assert outcome["max_diff"] <= 1e-6, outcome["max_diff"]
        assert outcome["pointer"] == "step_00000002"
        state = outcome["state"]
        assert state["step"] == SAVE_AT and state["run_id"] == "run-abc" and state["world_size"] == 2
        assert state["extra"] == {"data": {"shard": 7 + rank, "offset": 11, "epoch": 0}}
        assert outcome["lr"][0] == outcome["lr"][1] > 0  # the schedule resumed at its step
    # DeepSpeed also drops its helper scripts (zero_to_fp32.py, ...) beside the checkpoints
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py") == ["latest", "step_00000002"]
    assert (tmp_path / "step_00000002" / "model_spec.json").is_file()
    assert {p.name for p in (tmp_path / "step_00000002").glob("extra_rank*.pt")} == {"extra_rank00000.pt",
                                                                                    "extra_rank00001.pt"}
    # export: consolidated fp32 weights that open_clip itself loads, equal to the weights at the save
    exported = export_weights(tmp_path, tmp_path / "export")
    loaded = open_clip.create_model("local-dir:" + str(exported)).state_dict()
    saved = outcomes[0]["saved"]
    assert loaded.keys() == saved.keys()
    assert max((loaded[n].reshape(saved[n].shape) - saved[n]).abs().max().item() for n in saved) == 0.0
    assert export_weights(tmp_path / "step_00000002", tmp_path / "export2").is_dir()
    # a 2-rank ZeRO checkpoint refuses a 1-process resume before touching any engine
    with pytest.raises(ValueError, match="saved by 2 ranks"):
        checkpoint.load(None, tmp_path)


def test_resolve_tag_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        checkpoint.resolve_tag(tmp_path)
    (tmp_path / "latest").write_text("step_00000005")
    with pytest.raises(ValueError, match="step_00000005"):
        checkpoint.resolve_tag(tmp_path)
    with pytest.raises(ValueError, match="step must be"):
        checkpoint.save(None, tmp_path, -1)

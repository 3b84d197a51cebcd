"""Resume at another world size: a checkpoint saved by 2 ranks loads on 1 and one saved by 1 loads on 2,
with the module weights and the Adam moments exactly as saved (real DeepSpeed engines, gloo)."""

from __future__ import annotations

import pytest
import torch

from dmlscale.train import checkpoint
from tests.distributed.launch import results, run_world
from tests.train.checkpoint_helpers import small_engine, train_steps
from tests.train.helpers import full_params


def full_optimizer_state(engine) -> dict[str, dict[str, torch.Tensor]]:
    """exp_avg / exp_avg_sq of every parameter, whole: ZeRO 1-2 fragments are cut from the flat fp32
    partition's Adam state where each parameter lies and summed over ranks (collective)."""
    states = {}
    optimizer = engine.optimizer
    for name, param in engine.module.named_parameters():
        if engine.zero_optimization_stage() == 0:
            state = optimizer.state[param]
            states[name] = {key: state[key].detach().clone().float() for key in ("exp_avg", "exp_avg_sq")}
            continue
        states[name] = {}
        for key in ("exp_avg", "exp_avg_sq"):
            whole = torch.zeros(param.numel(), dtype=torch.float32)
            mapping = param._hp_mapping
            if mapping is not None:
                flat = optimizer.single_partition_of_fp32_groups[mapping.param_group_index]
                lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                whole[lp.start:lp.start + lp.numel] = optimizer.optimizer.state[flat][key][hp.start:hp.start + hp.numel]
            torch.distributed.all_reduce(whole)
            states[name][key] = whole.reshape(param.shape)
    return states


def _save_worker(rank, world_size, run_dir, zero_stage):
    engine = small_engine(zero_stage)
    train_steps(engine, rank, range(2))
    checkpoint.save(engine, run_dir, 2, {"data": {"shard": 3, "offset": 5 + rank}})
    return {"params": full_params(engine), "optim": full_optimizer_state(engine), "lr": engine.get_lr()[0]}


def _load_worker(rank, world_size, run_dir, zero_stage):
    engine = small_engine(zero_stage, seed=9)
    with pytest.raises(ValueError, match="saved by"):
        checkpoint.load(engine, run_dir)
    state = checkpoint.load(engine, run_dir, allow_world_size_change=True)
    out = {"params": full_params(engine), "optim": full_optimizer_state(engine), "lr": engine.get_lr()[0],
           "state": {k: v for k, v in state.items() if k != "rng"}, "random": torch.rand(3)}
    train_steps(engine, rank, range(2, 3))  # and it trains on
    out["finite_after_step"] = checkpoint.weights_finite(engine)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
@pytest.mark.parametrize("saved_ranks,loaded_ranks", [(2, 1), (1, 2)])
def test_resume_at_another_world_size_restores_weights_and_moments_exactly(tmp_path, zero_stage, saved_ranks,
                                                                           loaded_ranks):
    saved = results(run_world(_save_worker, saved_ranks, tmp_path, zero_stage))[0]
    loaded = results(run_world(_load_worker, loaded_ranks, tmp_path, zero_stage))
    for rank, outcome in enumerate(loaded):
        param_diff = _max_diff(outcome["params"], saved["params"])
        moment_diffs = [_max_diff({n: s[key] for n, s in outcome["optim"].items()},
                                  {n: s[key] for n, s in saved["optim"].items()}) for key in ("exp_avg", "exp_avg_sq")]
        print(f"rank {rank}: params {param_diff}, moments {moment_diffs}")
        assert param_diff == 0.0 and moment_diffs == [0.0, 0.0]
        assert max(s["exp_avg"].abs().max().item() for s in saved["optim"].values()) > 0  # moments were non-trivial
        assert outcome["lr"] == saved["lr"]
        assert outcome["state"]["step"] == 2 and outcome["state"]["world_size"] == saved_ranks
        assert outcome["state"]["extra"] == {"data": {"shard": 3, "offset": 5}}  # saved rank 0's
        assert outcome["finite_after_step"]
    if loaded_ranks == 2:  # the new rank got its own random stream
        assert not torch.equal(loaded[0]["random"], loaded[1]["random"])

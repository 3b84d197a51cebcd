"""all_gather_with_grad on real gloo processes: exact values and reduce-scatter gradients with unequal
local batches; clear errors when ranks disagree on shape or dtype; world info from launchers."""

import pytest
import torch

from dmlscale.distributed import all_gather_no_grad, all_gather_with_grad, world_info_from_env
from dmlscale.distributed.env import first_slurm_host
from tests.distributed.launch import results, run_world

DIM = 3


def split_sizes(world_size: int, unequal: bool) -> list[int]:
    return [2 + (3 * r) % 4 for r in range(world_size)] if unequal else [3] * world_size


def global_data(total: int):
    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(total, DIM, generator=gen, dtype=torch.float64)
    weights_WND = torch.randn(8, total, DIM, generator=gen, dtype=torch.float64)  # one per rank
    return x_ND, weights_WND


def rank_loss(gathered_ND, rank, weights_WND):
    """A different non-linear loss on every rank, so the test sees how gradients are summed."""
    return ((gathered_ND * weights_WND[rank]).sum() + (gathered_ND @ gathered_ND.t()).tanh().sum() * (rank + 1))


def _gather_and_grad(rank, world_size, sizes):
    x_ND, weights_WND = global_data(sum(sizes))
    start = sum(sizes[:rank])
    x_local = x_ND[start:start + sizes[rank]].clone().requires_grad_(True)
    gathered = all_gather_with_grad(x_local)
    labels = all_gather_no_grad(torch.arange(sizes[rank]) + 100 * rank, name="labels")
    rank_loss(gathered, rank, weights_WND).backward()
    return gathered.detach(), x_local.grad, labels


@pytest.mark.parametrize("unequal", [False, True], ids=["equal", "unequal"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_gather_values_and_gradients_equal_single_process(world_size, unequal):
    sizes = split_sizes(world_size, unequal)
    outs = results(run_world(_gather_and_grad, world_size, sizes))
    x_ND, weights_WND = global_data(sum(sizes))
    x_ref = x_ND.clone().requires_grad_(True)
    sum(rank_loss(x_ref, r, weights_WND) for r in range(world_size)).backward()
    expected_labels = torch.cat([torch.arange(n) + 100 * r for r, n in enumerate(sizes)])
    for rank, (gathered, grad, labels) in enumerate(outs):
        assert torch.equal(gathered, x_ND)
        assert torch.equal(labels, expected_labels)
        start = sum(sizes[:rank])
        assert (grad - x_ref.grad[start:start + sizes[rank]]).abs().max() < 1e-10


def _mismatched(rank, world_size, bad_rank, bad):
    x = torch.zeros(2 + rank, DIM, dtype=torch.float64)
    if rank == bad_rank:
        x = torch.zeros(2, DIM + 2, dtype=torch.float64) if bad == "dim" else torch.zeros(2, DIM, dtype=torch.float32)
    return all_gather_with_grad(x).shape


@pytest.mark.parametrize("bad", ["dim", "dtype"])
def test_ranks_that_disagree_get_a_clear_error_not_a_hang(bad):
    outcomes = run_world(_mismatched, 3, 2, bad)
    for outcome in outcomes:
        assert "error" in outcome, outcome
        message = outcome["error"]
        assert message.startswith("ValueError") and "rank 2" in message
        assert ("(2, 5)" in message) if bad == "dim" else ("torch.float32" in message and "torch.float64" in message)


def test_world_info_from_torchrun_slurm_and_single():
    torchrun = world_info_from_env({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                                    "GROUP_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.local_rank, torchrun.world_size, torchrun.node_rank) == (5, 1, 8, 1)
    assert (torchrun.master_addr, torchrun.master_port, torchrun.launcher) == ("node7", 1234, "torchrun")
    slurm = world_info_from_env({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
                                 "SLURM_NTASKS_PER_NODE": "2(x2)", "SLURM_NODEID": "1",
                                 "SLURM_JOB_NODELIST": "gpu[003-004]"})
    assert (slurm.rank, slurm.local_rank, slurm.world_size, slurm.local_world_size) == (3, 1, 4, 2)
    assert slurm.master_addr == "gpu003" and slurm.launcher == "slurm"
    single = world_info_from_env({})
    assert (single.rank, single.world_size, single.is_distributed) == (0, 1, False)
    assert first_slurm_host("cpu1,cpu2") == "cpu1"
    with pytest.raises(ValueError, match="RANK='x'"):
        world_info_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="rank 4 is outside"):
        world_info_from_env({"RANK": "4", "WORLD_SIZE": "2"})


def test_missing_rank_fails_fast_instead_of_hanging():
    import time

    import torch.distributed as dist

    from dmlscale.distributed import WorldInfo, init_process_group
    from tests.distributed.launch import free_port

    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 0: the process group of 2 ranks .* did not form within 2 s"):
        init_process_group(WorldInfo(rank=0, world_size=2, local_world_size=2, master_port=free_port()),
                           backend="gloo", timeout_s=2)
    assert time.monotonic() - start < 30
    assert not dist.is_initialized()

"""Throughput and timing bookkeeping (hand-computed from a scripted clock) and peak memory."""

import pytest
import torch

from dmlscale.monitor import StepTimer, peak_memory_bytes


def scripted_clock(times):
    """A clock that returns the given instants in order (seconds)."""
    iterator = iter(times)
    return lambda: next(iterator)


def test_step_timer_splits_data_and_step_time_and_rates():
    # reset at 0; step 1: data until 1.0, step until 3.0; step 2: data until 3.5, step until 5.5; summary at 6.0
    timer = StepTimer(clock=scripted_clock([0.0, 1.0, 3.0, 3.5, 5.5, 6.0]))
    timer.data_done()
    timer.step_done(32)
    timer.data_done()
    timer.step_done(16)
    summary = timer.summary(global_samples=48 * 4)
    assert summary == pytest.approx({
        "perf/samples_per_s_rank": 48 / 6.0,
        "perf/samples_per_s_global": 192 / 6.0,
        "perf/data_time_s": (1.0 + 0.5) / 2,
        "perf/step_time_s": (2.0 + 2.0) / 2,
        "perf/data_fraction": 1.5 / 5.5,
    })


def test_reset_starts_a_new_interval():
    timer = StepTimer(clock=scripted_clock([0.0, 1.0, 2.0, 10.0, 11.0, 15.0, 16.0]))
    timer.data_done()
    timer.step_done(8)
    timer.reset()  # at 10.0, e.g. after evaluation
    timer.data_done()
    timer.step_done(4)
    summary = timer.summary(prefix="train/")
    assert summary == pytest.approx({"train/samples_per_s_rank": 4 / 6.0, "train/data_time_s": 1.0,
                                     "train/step_time_s": 4.0, "train/data_fraction": 0.2})
    with pytest.raises(ValueError, match="-3"):
        timer.step_done(-3)


def peak_rss_from_proc():
    """VmHWM (peak resident set) of this process, read from /proc, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    pytest.skip("/proc/self/status has no VmHWM on this system")


def test_peak_memory_on_cpu_is_the_process_peak_rss():
    block = torch.ones(64 * 2**20 // 8, dtype=torch.float64)  # 64 MiB, touched
    reported = peak_memory_bytes(torch.device("cpu"))
    proc = peak_rss_from_proc()
    assert block.sum().item() == block.numel()
    assert abs(reported - proc) < 16 * 2**20 and reported > 64 * 2**20
    assert peak_memory_bytes() == pytest.approx(reported, abs=16 * 2**20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_on_cuda_is_max_allocated():
    torch.cuda.reset_peak_memory_stats()
    block = torch.empty(32 * 2**20, dtype=torch.uint8, device="cuda")
    assert peak_memory_bytes("cuda") >= block.numel()

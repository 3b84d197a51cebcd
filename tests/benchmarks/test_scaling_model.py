"""The scaling study's parts (benchmarks/scaling_*.py, process_counters.py): the model's arithmetic against a
case worked by hand, the process counters against buffers and sockets of known size, and the model's bytes
per step against what real gloo ranks receive."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import scaling_formulas as model  # noqa: E402
from process_counters import tcp_bytes_received  # noqa: E402

# D=4, T=2, 4 bytes per value: one row of features is 16 bytes
CAL = model.Calibration(dim=4, tile=2, bytes_per_value=4, tile_seconds={"dmlscale_clip": 1.0, "dmlscale_siglip": 2.0},
                        tile_workspace_bytes={"dmlscale_clip": 100, "dmlscale_siglip": 50},
                        open_clip_seconds_per_logit=0.5, open_clip_bytes_per_logit=16.0, model_seconds_per_pair=3.0,
                        gemm_flops_per_second=1.0, loopback_bytes_per_second=64.0, loopback_cpu_seconds_per_byte=0.25)


def test_memory_per_rank_by_hand():
    # N=8, W=2, n=4. CLIP: 100 + (8 + 4) 16 + 8 * 16 (gathered texts) + (4 + 3 * 8) 4 (statistics)
    assert model.memory_bytes("dmlscale_clip", 8, 2, CAL) == 100 + 192 + 128 + 112
    assert model.memory_bytes("dmlscale_siglip", 8, 2, CAL) == 50 + 192 + 128
    # open_clip: 16 bytes x 4 x 8 logits + 2 x 4 rows of input gradients + 2 x 8 gathered rows
    assert model.memory_bytes("open_clip", 8, 2, CAL) == 512 + 128 + 256
    # one rank gathers nothing: 100 + (8 + 8) 16 + (8 + 24) 4
    assert model.memory_bytes("dmlscale_clip", 8, 1, CAL) == 100 + 256 + 128
    # uneven split: the largest rank holds ceil(9 / 2) = 5 pairs
    assert model.local_pairs(9, 2) == 5


def test_bytes_and_times_by_hand():
    # W=4, n=2: all-gather 3 x 2 x 16 = 96; NCCL's reduce-scatter of the gradient 3 x 2 x 16 = 96 (gloo's
    # all-reduce of 8 x 16 bytes: 2 x 3/4 x 128 = 192); two all-reduces of 8 x 4: 48 each
    assert model.collectives("dmlscale_clip", 8, 4, 4, 4) == [("all_gather", 96), ("reduce_scatter", 96),
                                                             ("all_reduce", 48), ("all_reduce", 48)]
    assert model.collectives("dmlscale_clip", 8, 4, 4, 4, backend="gloo") == [
        ("all_gather", 96), ("all_reduce", 192), ("all_reduce", 48), ("all_reduce", 48)]
    assert model.comm_bytes("dmlscale_siglip", 8, 4, 4, 4) == 96 + 96
    assert model.comm_bytes("dmlscale_siglip", 8, 4, 4, 4, backend="gloo") == 96 + 192
    assert model.comm_bytes("open_clip", 8, 4, 4, 4) == 4 * 96
    assert model.comm_bytes("open_clip", 8, 1, 4, 4) == 0
    # at 96 B/s and 1 s per message: gather 3 + 1, reduce-scatter 3 + 1, all-reduces 2 log2(4) = 4 + 0.5 each
    assert model.comm_seconds("dmlscale_clip", 8, 4, CAL, bytes_per_second=96, latency_seconds=1) == 4 + 4 + 4.5 + 4.5
    # W=2: 4 x 8 logits = 8 tiles of 2 x 2 at 1 s; open_clip 32 logits at 0.5 s
    assert model.compute_seconds("dmlscale_clip", 8, 2, CAL) == 8
    assert model.compute_seconds("open_clip", 8, 2, CAL) == 16
    # loss 8 / 2 = 4, comm 64 + 64 + 2 x 32 = 192 B at 256 B/s = 0.75, model 4 pairs x 3 s / 2 = 6
    assert model.loss_share("dmlscale_clip", 8, 2, CAL, bytes_per_second=256, latency_seconds=0,
                            speedup=2) == pytest.approx(4.75 / 10.75)
    # the real-run predictions (gloo: 256 B): CPU 8 + 256 B x 0.25 s; wall on 1 core: 8 x 2 ranks + 256 / 64
    assert model.check_cpu_seconds("dmlscale_clip", 8, 2, CAL) == 8 + 64
    assert model.check_wall_seconds("dmlscale_clip", 8, 2, CAL, cores=1, threads=1) == 16 + 4


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="'open_clip_global'"):
        model.memory_bytes("open_clip_global", 8, 2, CAL)
    with pytest.raises(ValueError, match="ranks=16"):
        model.comm_bytes("dmlscale_clip", 8, 16, 4, 4)
    with pytest.raises(ValueError, match="-1"):
        model.comm_seconds("dmlscale_clip", 8, 2, CAL, bytes_per_second=-1, latency_seconds=0)


def test_tcp_bytes_received_counts_a_known_transfer():
    payload = b"x" * (1 << 20)
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                before = tcp_bytes_received()
                sender = threading.Thread(target=client.sendall, args=(payload,))
                sender.start()
                got = 0
                while got < len(payload):
                    got += len(peer.recv(1 << 16))
                sender.join()
                assert tcp_bytes_received() - before == len(payload)


def test_peak_memory_measures_one_step():
    """A step that touches 32 MiB shows 32 MiB, though a freed 64 MiB buffer set the process's earlier peak
    (the high-water mark is reset); an empty step shows (almost) nothing. In a fresh interpreter: the malloc
    settings are process-wide."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from process_counters import PeakMemory, release_freed_memory

        def touched(num_bytes):
            buffer = bytearray(num_bytes)
            buffer[::4096] = b"y" * len(range(0, num_bytes, 4096))
            return buffer

        release_freed_memory()
        big = touched(64 << 20)
        del big
        with PeakMemory() as step:
            buffer = touched(32 << 20)
            del buffer
        with PeakMemory() as empty:
            pass
        print(step.extra_bytes, empty.extra_bytes)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    step_bytes, empty_bytes = map(int, done.stdout.split())
    assert 31 << 20 <= step_bytes < 34 << 20  # RSS counters are kept per CPU and lag by a few pages
    assert empty_bytes < 1 << 20


def test_model_bytes_match_gloo_ranks():
    """Two real gloo ranks, each path: the bytes a rank's sockets receive in one step are the model's (gloo's
    headers are the 2% allowed)."""
    from scaling_check import measure_run

    for path in model.PATHS:
        got = measure_run(path, 512, 2, dim=64, tile=128, threads=1, repeats=1)
        predicted = model.comm_bytes(path, 512, 2, 64, 4, backend="gloo")
        assert got["received_bytes"] == pytest.approx(predicted, rel=0.02), path

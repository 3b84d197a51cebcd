"""Two "nodes" x two processes on one machine through launch/torchrun_multi_node.sh: torchrun's c10d
rendezvous on loopback assigns the 4 ranks, and a short training run finishes on all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.launch import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "torchrun_multi_node.sh"
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")


def launch_env(**extra: str) -> dict:
    """This environment without any launcher's rank variables (pytest may itself run under one)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return dict(env, PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)


@pytest.mark.slow
def test_two_nodes_of_two_processes_via_c10d_rendezvous(tmp_path, digits_root):
    run_dir = tmp_path / "c10d"
    env = launch_env(RDZV_ENDPOINT=f"127.0.0.1:{free_port()}", NNODES="2", NPROC_PER_NODE="2",
                     LOCAL_ADDR="127.0.0.1", RDZV_ID="test-c10d")
    args = [f"run_dir={run_dir}", f"data.root={digits_root}", "model.name=dml-tiny-vit", "data.batch_size=8",
            "train.steps=2", "optim.warmup_steps=1", "eval.every=0", "train.threads=1", "eval.retrieval=false",
            "monitor.console=false", "monitor.plots=false", "checkpoint.export=false"]
    nodes = [subprocess.Popen(["bash", str(SCRIPT), *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=420)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["step"] == 2
    assert 0.0 <= summary["eval/zero_shot_top1"] <= 1.0
    # rank 0 (on whichever node the rendezvous made node 0) printed the result line once
    assert sum("dmlscale train: 2 steps on 4 process(es)" in output for output in outputs) == 1
    checkpoint = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert len(list((run_dir / "checkpoints" / checkpoint).glob("extra_rank*.pt"))) == 4


@pytest.mark.parametrize("script", ["launch/torchrun_single_node.sh", "launch/torchrun_multi_node.sh",
                                    "slurm/train.sbatch"])
def test_launch_scripts_parse_and_resume_where_promised(script):
    text = (REPO / script).read_text()
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True).returncode == 0
    assert "-m dmlscale.cli train" in text
    if script.startswith("slurm"):
        assert "#SBATCH --requeue" in text and "trap requeue USR1 TERM" in text
        assert sum("dmlscale.cli train" in line and "--resume latest" in line for line in commands) == 2
    else:  # a torchrun restart resumes by itself (TORCHELASTIC_RESTART_COUNT > 0): no --resume in the script
        assert not any("--resume" in line for line in commands)
    if "torchrun" in script or "LAUNCHER=${LAUNCHER:-torchrun}" in text:
        assert '--max-restarts="${MAX_RESTARTS:-0}"' in text
    if script.endswith("single_node.sh"):  # c10d on loopback: --standalone restarts were unreliable
        assert not any("--standalone" in line for line in commands)
        assert any("--rdzv-backend=c10d" in line and "127.0.0.1" in line for line in commands)


def test_multi_node_script_requires_its_endpoint(tmp_path):
    env = {k: v for k, v in launch_env().items() if k != "RDZV_ENDPOINT"}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "RDZV_ENDPOINT" in result.stderr

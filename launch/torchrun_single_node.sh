#!/usr/bin/env bash
# Train with every GPU of this machine (or NPROC CPU processes under gloo), one torchrun:
#   launch/torchrun_single_node.sh --config clip_vit_b32_laion [key=value ...]
#   NPROC=2 launch/torchrun_single_node.sh                      # the quickstart as 2 CPU processes
#   MAX_RESTARTS=2 NPROC=2 launch/torchrun_single_node.sh ...   # a crashed worker restarts the group twice
# Environment:
#   NPROC          processes (default: number of GPUs, else 2)
#   MAX_RESTARTS   worker-group restarts after a worker fails (default 0: a failure ends the run). A restarted
#                  worker sees TORCHELASTIC_RESTART_COUNT > 0 and the trainer resumes from the newest
#                  complete checkpoint by itself, so no --resume is passed here.
#   RDZV_PORT      loopback port of the c10d rendezvous store (default: a free one, chosen now)
#   PYTHON         interpreter (default: .venv/bin/python if present, else python)
# c10d rendezvous on 127.0.0.1 (not --standalone) and gloo on the loopback interface: restarts reuse the
# agent's store, and dmlscale forms each restart's group on fresh keys (dmlscale/distributed/formation.py).
# Arguments are passed to `dmlscale train`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
if [ -z "${RDZV_PORT:-}" ]; then
  RDZV_PORT=$("$PYTHON" -c "from dmlscale.distributed.env import free_port; print(free_port())")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc-per-node="$NPROC" \
  --rdzv-backend=c10d --rdzv-endpoint="127.0.0.1:$RDZV_PORT" --rdzv-id="dmlscale-$RDZV_PORT" \
  --local-addr=127.0.0.1 --max-restarts="${MAX_RESTARTS:-0}" \
  -m dmlscale.cli train "$@"

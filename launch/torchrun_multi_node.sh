#!/usr/bin/env bash
# Multi-node training with torchrun's c10d rendezvous. Run the same command on every node:
#   RDZV_ENDPOINT=node0.example:29400 NNODES=2 NPROC_PER_NODE=8 \
#     launch/torchrun_multi_node.sh --config clip_vit_b32_laion [key=value ...]
# The agent on the host named in RDZV_ENDPOINT serves the rendezvous store; the others join it, ranks are
# assigned by the rendezvous (no NODE_RANK needed). Environment:
#   RDZV_ENDPOINT  host:port of the rendezvous store (required; reachable from every node)
#   NNODES         number of nodes, or MIN:MAX for an elastic range (default 1)
#   NPROC_PER_NODE processes per node (default: number of GPUs, else 1)
#   RDZV_ID        job id shared by all nodes (default: dmlscale)
#   MAX_RESTARTS   worker group restarts on failure (default 0); a restarted worker sees TORCHELASTIC_RESTART_COUNT > 0
#                  and the trainer resumes from the newest complete checkpoint by itself (no --resume needed)
#   LOCAL_ADDR     this node's address for the workers' process group (default: its host name)
#   PYTHON         interpreter (default: .venv/bin/python if present, else python)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the rendezvous store}"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 1)")
fi
extra=()
if [ -n "${LOCAL_ADDR:-}" ]; then extra+=(--local-addr "$LOCAL_ADDR"); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --nproc-per-node="$NPROC_PER_NODE" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-dmlscale}" \
  --max-restarts="${MAX_RESTARTS:-0}" "${extra[@]}" \
  -m dmlscale.cli train "$@"

#!/usr/bin/env bash
# Train with every GPU of this machine (or NPROC CPU processes under gloo), one torchrun, no rendezvous server:
#   launch/torchrun_single_node.sh --config configs/clip_vit_b32_laion.yaml [key=value ...]
#   NPROC=2 launch/torchrun_single_node.sh                      # the quickstart as 2 CPU processes
# Environment: NPROC (default: number of GPUs, else 2), PYTHON (default: .venv/bin/python if present, else python).
# Arguments are passed to `dmlscale train`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" \
  -m dmlscale.cli train "$@"

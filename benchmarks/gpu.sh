#!/usr/bin/env bash
# The quality benchmark of issue 7 (benchmarks/quality.py) sized for ONE GPU in under 8 minutes:
# MNIST 28x28, unet-small, vanilla / Min-SNR / P2 / ANT-UW / ANT-Nash / ANT-PCGrad (timestep
# clustering, k=5), seeds 0,1,2 (seed-major, so whole seeds finish first), equal steps, curves,
# final FD on 2000 samples. Same JSON as the CPU runs, in benchmarks/results/quality-gpu/, plus
# device.txt (nvidia-smi). A hard time limit stops training after TRAIN_LIMIT seconds; the
# summary is then written from the runs that finished (the script is resumable: run it again to
# finish the rest).
#
#   ANTDIFF_MNIST=path/to/mnist bash benchmarks/gpu.sh        # or: bash benchmarks/gpu.sh DIR
#
# Environment: PYTHON (default .venv/bin/python, else python3), TRAIN_LIMIT (default 420 s),
# STEPS (default 1500), SEEDS (default 0,1,2), METHODS, WORKERS (runs sharing the GPU, default 3).
# Not yet run on a GPU: no GPU was available when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "gpu.sh: error: $*" >&2
    exit 2
}

PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3) || fail "no python found (set PYTHON)"
MNIST=${1:-${ANTDIFF_MNIST:-}}
[[ -n $MNIST ]] || fail "pass the MNIST IDX folder as the first argument or ANTDIFF_MNIST=DIR"
[[ -d $MNIST ]] || fail "MNIST folder '$MNIST' does not exist"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this benchmark needs an NVIDIA GPU"
nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi cannot see a GPU (driver not loaded?)"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    fail "torch in $PY has no CUDA (a CPU-only wheel?); install a CUDA build of torch"

RESULTS=benchmarks/results/quality-gpu
OUT=runs/bench/quality-gpu
STEPS=${STEPS:-1500}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-vanilla,min-snr,p2,ant-uw-timestep,ant-nash-timestep,ant-pcgrad-timestep}
WORKERS=${WORKERS:-3}
TRAIN_LIMIT=${TRAIN_LIMIT:-420}
mkdir -p "$RESULTS"
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvidia-smi
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >"$RESULTS/device.txt"
head -3 "$RESULTS/device.txt"

ARGS=(--dataset mnist --mnist "$MNIST" --device cuda --workers "$WORKERS" --threads 2
    --methods "$METHODS" --seeds "$SEEDS" --steps "$STEPS" --curve-every 250 --curve-num 1000
    --fd-num 2000 --sample-steps 25 --results "$RESULTS" --out "$OUT")
# The feature net for MNIST FD is trained once (cached) before the workers start.
"$PY" - "$MNIST" <<'EOF'
import sys
from antdiff.data import load_dataset
from antdiff.evaluate import feature_net_for
feature_net_for(load_dataset(f"mnist:{sys.argv[1]}"))
EOF
status=0
timeout --signal=INT "$TRAIN_LIMIT" "$PY" benchmarks/quality.py "${ARGS[@]}" || status=$?
if [[ $status -ne 0 ]]; then
    echo "gpu.sh: training stopped (exit $status, limit ${TRAIN_LIMIT}s); summarising finished runs"
fi
"$PY" benchmarks/quality.py "${ARGS[@]}" --summary-only --plots "$RESULTS" --plot-prefix gpu

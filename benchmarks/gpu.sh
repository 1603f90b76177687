#!/usr/bin/env bash
# The real-data benchmark (benchmarks/quality.py, setting animals-gpu) sized for ONE GPU and one
# 10-minute window: 28x28 Animal-Shape, unet-small, batch 128, 5,000 steps; DDPM vanilla,
# loss-aware and --ant, flow matching vanilla, logit-normal and --ant; seeds 0,1,2 (seed-major,
# so whole seeds finish first); standard Inception FID on 2,000 samples (and on 1,000 at steps
# 1,250/2,500/3,750/5,000), classifier FD, precision/recall; equal steps and equal wall-clock.
# Same JSON as the CPU runs, in benchmarks/results/quality-gpu/, plus device.txt (nvidia-smi).
# A hard limit stops training after TRAIN_LIMIT seconds; the summary is then written from the
# runs that finished (resumable: run it again to finish the rest).
#
#   bash benchmarks/gpu.sh
#
# Needs the extras: pip install 'ant-diffusion[animals,fid]'. Environment: PYTHON (default
# .venv/bin/python, else python3), TRAIN_LIMIT (default 480 s), STEPS (default 5000), SEEDS
# (default 0,1,2), METHODS, WORKERS (runs sharing the GPU, default 3).
# Not yet run on a GPU: no GPU was available when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "gpu.sh: error: $*" >&2
    exit 2
}

PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3) || fail "no python found (set PYTHON)"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this benchmark needs an NVIDIA GPU"
nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi cannot see a GPU (driver not loaded?)"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    fail "torch in $PY has no CUDA (a CPU-only wheel?); install a CUDA build of torch"

RESULTS=benchmarks/results/quality-gpu
OUT=runs/bench/quality-gpu
METHODS=${METHODS:-vanilla,loss-aware,ant,flow-vanilla,flow-logit-normal,flow-ant}
WORKERS=${WORKERS:-3}
TRAIN_LIMIT=${TRAIN_LIMIT:-480}
mkdir -p "$RESULTS"
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvidia-smi
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >"$RESULTS/device.txt"
head -3 "$RESULTS/device.txt"

ARGS=(--dataset animals-gpu --device cuda --workers "$WORKERS" --threads 2
    --methods "$METHODS" --seeds "${SEEDS:-0,1,2}" --steps "${STEPS:-5000}"
    --results "$RESULTS" --out "$OUT")
# The data, the feature net of the classifier FD and the Inception statistics of the data set
# are made once (cached) before the workers start; a missing extra stops here with one line.
"$PY" - <<'PYEOF' || fail "the extras are missing: pip install 'ant-diffusion[animals,fid]'"
from antdiff.data import load_dataset
from antdiff.errors import AntError
from antdiff.evaluate import feature_net_for
from antdiff.metrics.inception import Inception
from antdiff.metrics.inception_fid import reference_stats
try:
    data = load_dataset("animals")
    feature_net_for(data)
    reference_stats(data.x, data.name, Inception("cuda"))
except AntError as exc:
    raise SystemExit(f"gpu.sh: {exc}")
PYEOF
status=0
timeout --signal=INT "$TRAIN_LIMIT" "$PY" benchmarks/quality.py "${ARGS[@]}" || status=$?
if [[ $status -ne 0 ]]; then
    echo "gpu.sh: training stopped (exit $status, limit ${TRAIN_LIMIT}s); summarising finished runs"
fi
"$PY" benchmarks/quality.py "${ARGS[@]}" --summary-only --plots "$RESULTS" --plot-prefix gpu

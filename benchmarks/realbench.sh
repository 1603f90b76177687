#!/usr/bin/env bash
# The 28x28 real-data protocol on a CPU machine (benchmarks/quality.py; docs/results.md, "Real
# data"), in order of priority. Every step is resumable: finished runs are kept in
# benchmarks/results/quality/SETTING/METHOD/seedN.json and reused, so stop it at any time and
# run it again to go on. Each step ends with the setting's summary table (--cost-rounds 0: the
# equal-wall-clock column then uses the runs' own clocks).
#
#   bash benchmarks/realbench.sh [STEP...]            # default: all steps, in order
#   ANTDIFF_MNIST=DIR bash benchmarks/realbench.sh mnist
#
# Steps: ddpm (animals: vanilla, --ant, loss-aware; the core comparison), baselines (Min-SNR,
# logit-normal t), flow (vanilla, logit-normal, ANT-UW auto, --ant), guidance (vanilla and --ant
# at guidance 1-4: the final evaluation only, from the runs of step ddpm), mnist (vanilla,
# loss-aware, --ant). Measured cost: docs/results.md, "Real data".
# Needs the extras: pip install 'ant-diffusion[animals,fid]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-0,1,2}
Q=("$PY" benchmarks/quality.py --workers 2 --threads 1 --cost-rounds 0 --seeds "$SEEDS")

step() {
    case $1 in
    ddpm) "${Q[@]}" --dataset animals --methods vanilla,ant,loss-aware ;;
    baselines) "${Q[@]}" --dataset animals --methods min-snr,logit-normal ;;
    flow) "${Q[@]}" --dataset animals --methods flow-vanilla,flow-logit-normal,flow-ant-uw-auto,flow-ant ;;
    guidance)
        "${Q[@]}" --dataset animals --methods vanilla,ant --guidances 1,2,3,4 --fd-num 1000 \
            --results benchmarks/results/quality-guidance ;; # resumes step ddpm's finished runs
    mnist) "${Q[@]}" --dataset mnist --methods vanilla,loss-aware,ant ;;
    *) echo "realbench.sh: error: unknown step '$1' (ddpm baselines flow guidance mnist)" >&2
        exit 2 ;;
    esac
}
for s in "${@:-ddpm baselines flow guidance mnist}"; do
    for one in $s; do step "$one"; done
done

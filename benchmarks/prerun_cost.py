"""The fixed cost of the manual affinity recipe: the pre-run and `antdiff affinity` that make the
matrix the *-affinity rows of benchmarks/quality.py cluster with, timed on this machine in units
of the setting's vanilla training steps (measured in the same process, one thread), into
RESULTS/SETTING/overheads.json for the equal-total-wall-clock tables.

    python benchmarks/prerun_cost.py --dataset digits   # also writes runs/bench/affinity-digits.npz
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch

from antdiff.cli import main

# setting -> (pre-run flags, `antdiff affinity` flags, the matrix it writes for quality.py)
RECIPES = {
    "digits": (
        "--dataset digits --method mean --steps 1500 --batch-size 64 --lr 2e-3 "
        "--ema-decay 0.995 --checkpoint-every 300 --keep-checkpoints 5 --log-every 300 "
        "--seed 0",
        "--checkpoints all",
        "affinity-digits.npz",
    ),
    "digits16": (
        "--dataset digits --resolution 16 --method vanilla --steps 1000 --batch-size 64 "
        "--lr 2e-3 --checkpoint-every 1000 --seed 0",
        "--checkpoints last --sketch-dim 4096",
        "affinity-digits16.npz",
    ),
    "toy": (
        "--dataset toy:gaussians8 --model mlp --method mean --steps 1500 --batch-size 1024 "
        "--lr 1e-3 --holdout 2000 --checkpoint-every 300 --keep-checkpoints 5 --seed 0",
        "--checkpoints all",
        "affinity-toy.npz",
    ),
}
RECIPES["digits-cond"] = RECIPES["digits"]  # the benchmark clusters it with the digits matrix
METHODS = ("ant-uw-affinity", "ant-nash-affinity", "ant-pcgrad-affinity", "stratified-affinity")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"failed: antdiff {shlex.join(argv)}")
    return time.perf_counter() - start


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=list(RECIPES), default="digits")
    ap.add_argument("--results", default="benchmarks/results/quality")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, affinity, matrix = RECIPES[args.dataset]
    run = Path(args.out) / f"prerun-{args.dataset}"
    shutil.rmtree(run, ignore_errors=True)
    pre = timed(["train", *shlex.split(train), "--out", str(run)])
    aff = timed(["affinity", "--run", str(run), *shlex.split(affinity)])
    shutil.copy(run / "affinity" / "affinity.npz", Path(args.out) / matrix)
    steps = int(shlex.split(train)[shlex.split(train).index("--steps") + 1])
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    per_step = rows[-1]["time"] / steps  # the pre-run's own training clock
    total = steps + aff / per_step
    out = {
        "steps": {m: round(total, 1) for m in METHODS},
        "note": "pre-run training steps + the affinity measurement in vanilla steps of the pre-run",
        "prerun_steps": steps,
        "affinity_seconds": round(aff, 1),
        "prerun_seconds": round(pre, 1),
        "seconds_per_step": round(per_step, 4),
        "commands": [
            f"antdiff train {train} --out {run}",
            f"antdiff affinity --run {run} {affinity}",
        ],
    }
    path = Path(args.results) / args.dataset / "overheads.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main_()

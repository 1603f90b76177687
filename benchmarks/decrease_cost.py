"""Cost of the Gramian the `decrease` sampler asks a loss-based method for (docs/decrease.md).

    OMP_NUM_THREADS=1 python benchmarks/decrease_cost.py [--steps 40] [--threads 1]

Two `antdiff train` runs of the DDPM digits setting (batch 64, `sampled:uw`, 5 timestep
intervals), one whose `decrease` sampler asks for the task Gramian on every step (the per-task
path: one forward/backward per interval sub-batch) and one that asks only at step 0 (one
weighted backward per step), stepped in alternating blocks of 5 so that a change of the
machine's load hits both alike. Prints the median seconds per step of each and their ratio r:
with a Gramian every N steps a run costs about 1 + (r - 1) / N of the plain sampler's steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from antdiff.cli import train_config
from antdiff.train import Trainer

FLAGS = "--dataset digits --batch-size 64 --lr 2e-3 --method sampled:uw --clusters timestep:5"


def trainer(out: Path, every: int) -> Trainer:
    sampling = f"--timestep-sampling decrease:0.5,0.9,0,{every}"
    return Trainer.start(train_config([*FLAGS.split(), *sampling.split(), f"--out={out}"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps of each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/decrease_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {"every step": [], "step 0 only": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "every step": trainer(Path(tmp, "a"), 1),
            "step 0 only": trainer(Path(tmp, "b"), 10**6),
        }
        for run in runs.values():
            for _ in range(3):  # warm-up, and step 0's Gramian out of the timing
                run.train_step()
        for _ in range(args.steps // 5):
            for name, run in runs.items():
                for _ in range(5):
                    start = time.perf_counter()
                    run.train_step()
                    times[name].append(time.perf_counter() - start)
        for run in runs.values():
            run.close()
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["every step"] / median["step 0 only"]
    result = {
        "setting": FLAGS,
        "threads": args.threads,
        "steps": args.steps,
        "median_seconds": median,
        "ratio": ratio,
        "overhead_every_10": (ratio - 1) / 10,
    }
    for name, t in median.items():
        print(f"{name:12s} {t * 1000:7.1f} ms/step")
    print(f"ratio {ratio:.2f}: a Gramian every 10 steps adds {100 * (ratio - 1) / 10:.1f}%")
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Cost and sampling noise of `antdiff evaluate` on digits.

    python benchmarks/evaluate_speed.py --run runs/demo [--num 2000] [--seeds 3]

Times one evaluation of NUM samples (DDIM, 50 steps, FD + precision/recall + held-out loss) per
sampling seed, and reports the spread of FD across sampling seeds of the SAME model: the
"resampling" noise to know before comparing two models. Without --run, an untrained unet-tiny is
timed (the cost does not depend on the weights; its FD means nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from antdiff import build
from antdiff.config import make_config
from antdiff.evaluate import Evaluator
from antdiff.rundir import RunDir


def untrained() -> tuple:
    cfg = make_config({})
    parts = build.components(cfg)
    return parts.model.eval(), cfg, parts.info, parts.schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run directory (default: an untrained model)")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds (0..S-1)")
    ap.add_argument("--out", default="benchmarks/results/evaluate_speed.json")
    args = ap.parse_args()
    if args.run:
        run = RunDir.open(args.run)
        model, cfg, info = build.trained_model(run), run.cfg, run.info
        schedule = build.schedule(cfg)
    else:
        model, cfg, info, schedule = untrained()
    rows = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        result = Evaluator(cfg, info, schedule, num=args.num, seed=seed)(model)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "seed": seed,
                "seconds": seconds,
                "fd": result["fd"],
                "fd_halves": result["fd_halves"],
                "fd_noise": result["fd_noise"],
            }
        )
        print(
            f"seed {seed}: {seconds:6.1f} s  FD {result['fd']:.3f}  "
            f"(floor {result['fd_halves']:.2f}, ceiling {result['fd_noise']:.1f})"
        )
    fds = [r["fd"] for r in rows]
    summary = {
        "run": args.run,
        "num_samples": args.num,
        "threads": torch.get_num_threads(),
        "seconds_median": statistics.median(r["seconds"] for r in rows),
        "fd_mean": statistics.mean(fds),
        "fd_std_over_sampling_seeds": statistics.stdev(fds) if len(fds) > 1 else None,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

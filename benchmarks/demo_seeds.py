"""`make demo` over seeds, beside vanilla on the same budget, and what the online affinity
measurement of `--clusters affinity:5:auto` costs there (the [auto] issue's 10% bound).

For each seed: `antdiff train --preset demo --seed S` (ANT-UW, automatic affinity clusters) and
the same command with `--method vanilla --clusters timestep:5`, each evaluated with `antdiff
evaluate --num 500`; runs and evaluations already on disk are reused. Prints two tables and
writes benchmarks/results/demo_seeds.json.

    python benchmarks/demo_seeds.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from antdiff.cli import main as antdiff
from step_cost import machine

ROWS = {"auto": [], "vanilla": ["--method", "vanilla", "--clusters", "timestep:5"]}


def ensure(name: str, seed: int, root: Path) -> dict:
    """The run's evaluation (training and evaluating it first if needed)."""
    run, result = root / f"{name}-{seed}", root / f"{name}-{seed}.json"
    if not result.is_file():
        if not (run / "samples.png").is_file():
            flags = ["--preset", "demo", *ROWS[name], "--seed", str(seed), "--out", str(run)]
            resume = ["--resume"] if (run / "config.json").is_file() else []
            assert antdiff(["train", *flags, *resume]) == 0
        assert antdiff(["evaluate", "--run", str(run), "--num", "500"]) == 0
        result.write_text((run / "metrics.json").read_text())
    out = json.loads(result.read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    out["train_seconds"] = last["time"]
    tasks = run / "tasks.json"
    if tasks.is_file():
        out["tasks"] = json.loads(tasks.read_text())
    return out


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", default="runs/demo-seeds")
    p.add_argument("--out", default="benchmarks/results/demo_seeds.json")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    res = {name: {s: ensure(name, s, Path(args.runs)) for s in seeds} for name in ROWS}
    print("| `make demo` (3,000 steps) | FD per seed (500 samples) | mean +- std |")
    print("|---|---|---|")
    for name, rows in res.items():
        fds = [rows[s]["fd"] for s in seeds]
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in fds)} | {spread(fds)} |")
    floor = res["auto"][seeds[0]]["fd_halves"]
    print(f"floor (two halves of the real digits): {floor:.2f}")
    print("\n| seed | measurement (s) | warm-up (s) | training (s) | measurement share |")
    print("|---|---|---|---|---|")
    shares = []
    for s in seeds:
        r = res["auto"][s]
        m, w, total = (
            r["tasks"]["measure_seconds"],
            r["tasks"]["warmup_seconds"],
            r["train_seconds"],
        )
        shares.append(m / total)
        print(f"| {s} | {m:.1f} | {w:.1f} | {total:.1f} | {100 * m / total:.1f}% |")
    summary = {
        "seeds": seeds,
        "fd": {n: [r[s]["fd"] for s in seeds] for n, r in res.items()},
        "fd_halves": floor,
        "measure_share": shares,
        "machine": machine(),
        "command": f"python benchmarks/demo_seeds.py --seeds {args.seeds}",
        "runs": {
            n: {
                s: {k: r[s][k] for k in ("fd", "precision", "recall", "train_seconds")}
                for s in seeds
            }
            for n, r in res.items()
        },
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

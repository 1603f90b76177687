"""How `--clusters affinity:K:auto` should measure: the partition against the warm-up length and
the measurement's size, compared with the partition of a fully trained run, and the cost.

One vanilla training run (what an auto run's warm-up is: the same batches, the same weights)
is measured at every snapshot step of every setting: warm-up W steps, S snapshots (at W/S, ...,
W), B bins, a probe of P samples, as `antdiff.affinity.auto` does (count-sketch 1024, the run's
seed for the probe, (seed, step) for the projection, the mean rounded to 4 decimals). The
reference is the manual recipe's matrix: the same run trained on to 1,500 steps, measured with
50 bins and a probe of 64 at steps 300, 600, ..., 1500 and averaged. Each K = 5 partition is
compared with the reference partition by the mean absolute distance of their 4 inner bounds.

    python benchmarks/auto_affinity.py [--seed 0] [--out benchmarks/results/auto_affinity.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from antdiff.affinity.auto import snapshot_steps
from antdiff.affinity.gradients import LossSetup, affinity_matrix, bin_edges, make_probe
from antdiff.affinity.sketch import block_seed
from antdiff.cli import train_config
from antdiff.tasks import cluster_timesteps
from antdiff.train import Trainer

TRAIN = "--dataset digits --batch-size 64 --lr 2e-3 --method vanilla --steps 1500"
WARMUPS, SNAPSHOTS, BINS, PROBES = (20, 50, 100, 200), (1, 3, 5), (10, 20, 50), (16, 32, 64)
DEFAULT = {"bins": 20, "probe": 32, "snapshots": 3}
REFERENCE = {"steps": (300, 600, 900, 1200, 1500), "bins": 50, "probe": 64}


def settings() -> list[dict]:
    """Every warm-up with the default size, and every size with the default warm-up (100)."""
    rows = [{"warmup": w, **DEFAULT} for w in WARMUPS]
    rows += [{"warmup": 100, **DEFAULT, "snapshots": s} for s in SNAPSHOTS if s != 3]
    rows += [{"warmup": 100, **DEFAULT, "bins": b} for b in BINS if b != 20]
    rows += [{"warmup": 100, **DEFAULT, "probe": p} for p in PROBES if p != 32]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/auto_affinity.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    need: dict[int, set[tuple[int, int]]] = {}  # step -> {(bins, probe)} to measure there
    for s in settings():
        for step in snapshot_steps(s["warmup"], s["snapshots"]):
            need.setdefault(step, set()).add((s["bins"], s["probe"]))
    for step in REFERENCE["steps"]:
        need.setdefault(step, set()).add((REFERENCE["bins"], REFERENCE["probe"]))
    matrices, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_config([*shlex.split(TRAIN), "--seed", str(args.seed), "--out", f"{tmp}/r"])
        trainer = Trainer.start(cfg)
        setup = LossSetup(trainer.parts.schedule.loss_path("cpu"), cfg.prediction, cfg.batch_size)
        start = time.perf_counter()
        while trainer.step < max(need):
            trainer.train_step()
            for bins, probe in sorted(need.get(trainer.step, ())):
                t0 = time.perf_counter()
                prb = make_probe(trainer.parts.data.x, None, probe, seed=cfg.seed)
                matrices[trainer.step, bins, probe] = affinity_matrix(
                    trainer.model,
                    prb,
                    bin_edges(cfg.timesteps, bins),
                    setup,
                    sketch_dim=1024,
                    seed=block_seed(cfg.seed, trainer.step),
                )
                seconds[trainer.step, bins, probe] = time.perf_counter() - t0
        train_seconds = time.perf_counter() - start - sum(seconds.values())
        schedule = trainer.parts.schedule
        trainer.close()
    per_step = train_seconds / max(need)

    def partition(steps: list[int], bins: int, probe: int) -> list[list[int]]:
        mean = np.round(np.mean([matrices[s, bins, probe] for s in steps], axis=0), 4)
        part = cluster_timesteps("affinity", 5, schedule, mean).partition
        return [list(iv) for iv in part.intervals]

    ref = partition(list(REFERENCE["steps"]), REFERENCE["bins"], REFERENCE["probe"])
    rows = []
    for s in settings():
        steps = snapshot_steps(s["warmup"], s["snapshots"])
        part = partition(steps, s["bins"], s["probe"])
        cost = sum(seconds[t, s["bins"], s["probe"]] for t in steps)
        bounds = np.abs(np.array([iv[0] for iv in part[1:]]) - [iv[0] for iv in ref[1:]])
        rows.append(
            {
                **s,
                "snapshot_steps": steps,
                "intervals": part,
                "bound_distance": float(bounds.mean()),
                "measure_seconds": round(cost, 2),
                "measure_in_steps": round(cost / per_step, 1),
            }
        )
    out = {
        "train": TRAIN,
        "seed": args.seed,
        "reference": {**REFERENCE, "intervals": ref},
        "seconds_per_step": round(per_step, 4),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(
        f"reference (1,500 steps, {REFERENCE['bins']} bins, probe {REFERENCE['probe']}, "
        f"5 snapshots): {ref}"
    )
    print(
        "| warm-up | snapshots | bins | probe | intervals | mean bound distance | "
        "measurement s (vanilla steps) |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['warmup']} | {r['snapshots']} | {r['bins']} | {r['probe']} | "
            f"{r['intervals']} | {r['bound_distance']:.1f} | {r['measure_seconds']} "
            f"({r['measure_in_steps']}) |"
        )


if __name__ == "__main__":
    main()

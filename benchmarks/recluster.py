"""Does re-clustering during training help `--clusters affinity:K:auto`? (the [auto] issue's
question; the answer decides whether a `--recluster-every` option ships.)

Each run is benchmarks/quality.py's `ant-uw-auto-w100` on its setting (a vanilla warm-up of 100
steps, the online affinity, the DP, ANT-UW), except that every N steps after the switch the
affinity is measured again on the current raw weights (the same bins, probe and sketch as the
warm-up's, one snapshot) and the intervals are re-chosen by the DP. Rule for the method's state
across a change of partition: UW's log-variance of a new interval is the mean of the old
intervals' log-variances weighted by their overlap with it (in timesteps); the optimizer starts
fresh moments for them. The final evaluation is quality.py's (the same evaluator, seeds and
sample counts), so the rows pair with its `ant-uw-auto-w100` rows of the same seeds; results in
benchmarks/results/recluster/SETTING-rN/seedS.json, and the paired table is printed.

    python benchmarks/recluster.py --dataset digits --every 250 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from antdiff import build, distributed
from antdiff.affinity.auto import SKETCH_DIM, AutoClusters
from antdiff.affinity.gradients import affinity_matrix
from antdiff.affinity.sketch import block_seed
from antdiff.cli import train_config
from antdiff.tasks import IntervalPartition, cluster_timesteps
from antdiff.train import Trainer
from quality import DEFAULTS, SETTINGS, VARIANTS, evaluator


def carried_log_vars(
    old: IntervalPartition, new: IntervalPartition, s: torch.Tensor
) -> torch.Tensor:
    """The overlap-weighted mean of the old intervals' log-variances on each new interval."""
    out = torch.zeros(new.k, dtype=s.dtype)
    for j, (l, r) in enumerate(new.intervals):
        for i, (a, b) in enumerate(old.intervals):
            out[j] += max(0, min(r, b) - max(l, a) + 1) * s[i]
        out[j] /= r - l + 1
    return out


class ReclusteringTrainer(Trainer):
    """The library's trainer, re-choosing its intervals every `every` steps after the switch."""

    every: int = 0
    meter: AutoClusters | None = None
    changes: list[dict[str, Any]]

    def train_step(self) -> dict[str, Any]:
        row = super().train_step()
        switched = self.auto is None and self.parts.info.clustering_cost == "affinity"
        if switched and self.meter is None:  # the warm-up's measurement set, kept for re-use
            self.meter = build.affinity_measurement(self.cfg, self.parts.data, self.parts.schedule)
            self.switch, self.changes = self.step, []
        if switched and self.step > self.switch and (self.step - self.switch) % self.every == 0:
            self.recluster()
        return row

    def recluster(self) -> None:
        m = self.meter
        start = time.perf_counter()
        matrix = affinity_matrix(
            self.model,
            m.probe,
            m.edges,
            m.setup,
            sketch_dim=SKETCH_DIM,
            seed=block_seed(self.cfg.seed, self.step),
        )
        chosen = cluster_timesteps("affinity", m.k, self.parts.schedule, matrix.round(4))
        old = self.parts.partition
        change = {
            "step": self.step,
            "seconds": round(time.perf_counter() - start, 3),
            "intervals": [list(iv) for iv in chosen.partition.intervals],
        }
        self.changes.append(change)
        if chosen.partition == old:
            return
        info = dataclasses.replace(self.parts.info, partition=chosen.partition)
        timestep_sampler, method, _ = build.tasks(self.cfg, info, self.parts.schedule)
        with torch.no_grad():
            old_log_vars = self.parts.method.log_vars
            method.log_vars.copy_(carried_log_vars(old, chosen.partition, old_log_vars))
        self.state.use_tasks(info, timestep_sampler, method, self.parts.weighting)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=list(SETTINGS))
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args(argv)
    bench = argparse.Namespace(**{**DEFAULTS, "dataset": args.dataset, "steps": args.steps})
    name, seeds = f"ant-uw-auto-r{args.every}", [int(s) for s in args.seeds.split(",")]
    base_row = "ant-uw-auto-w100"  # the auto default (10%) when these results were made
    root = Path("benchmarks/results/recluster") / f"{args.dataset}-r{args.every}"
    for seed in seeds:
        out = root / f"seed{seed}.json"
        if out.is_file():
            continue
        torch.set_num_threads(1)
        flags = (
            f"{SETTINGS[args.dataset]['flags']} {VARIANTS[base_row]} --steps "
            f"{args.steps} --seed {seed} --out runs/bench/recluster/{name}/seed{seed} "
            "--log-every 125 --checkpoint-every 1000 --num-samples 16"
        )
        cfg = train_config(shlex.split(flags))
        t0 = time.perf_counter()
        with ReclusteringTrainer.start(cfg) as trainer:
            trainer.every = args.every
            trainer.fit()
            with trainer.ema_weights() as model:
                final = {"1.0": evaluator(trainer, bench, bench.fd_num, 1.0)(model)}
        distributed.teardown()
        result = {
            "setting": args.dataset,
            "method": name,
            "seed": seed,
            "steps": cfg.steps,
            "partition": trainer.parts.partition.to_dict(),
            "final": final,
            "reclusterings": trainer.changes,
            "train_command": "antdiff train " + flags,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "curve": [],
            "command": f"python benchmarks/recluster.py --dataset {args.dataset} --every "
            f"{args.every} --seeds {seed}",
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"{name} seed {seed}: FD {final['1.0']['fd']:.2f}", flush=True)
    ours = [json.loads((root / f"seed{s}.json").read_text())["final"]["1.0"]["fd"] for s in seeds]
    base = [
        json.loads((Path(bench.results) / args.dataset / base_row / f"seed{s}.json").read_text())[
            "final"
        ]["1.0"]["fd"]
        for s in seeds
    ]
    diff = [a - b for a, b in zip(ours, base, strict=True)]
    sd = statistics.stdev(diff) if len(diff) > 1 else 0.0
    print(
        f"| seeds | {base_row} FD | {name} FD | paired difference |\n|---|---|---|---|\n"
        f"| {args.seeds} | {', '.join(f'{v:.2f}' for v in base)} | "
        f"{', '.join(f'{v:.2f}' for v in ours)} | {statistics.mean(diff):+.2f} +- {sd:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

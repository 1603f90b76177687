"""Negative transfer between denoising tasks (Go et al. 2023, Sec. 3, observation O2).

A generalist is trained on all timesteps, and one specialist per interval I_j on I_j only (a run
with `timestep_range`). A full sample needs both: the mixture denoiser uses the specialist for
t in I_j and the generalist elsewhere, inside one reverse loop. Then

    NTG_j = FD(mixture_j) - FD(generalist)          (lower FD is better)

so NTG_j < 0 means the specialist does better on I_j: negative transfer (the paper's sign). FD is
the Frechet distance on the project's classifier features (sliced Wasserstein for 2-D points).
Beside it, the same gap in held-out denoising loss on I_j, on the same (image, t, noise) triples
for both models (paired): heldout_gap_j = L_specialist(I_j) - L_generalist(I_j).

Budgets: `steps` gives every specialist the generalist's steps (it sees about k times more
samples of its interval); `samples` gives it round(steps * |I_j| / T) steps (steps / k for equal
intervals), the generalist's expected number of samples from I_j. The generalist is vanilla
(uniform t, mean loss) or, with an MTL method, ANT-trained on the same intervals (stratified
batches). Every run is seeded; mixture and generalist are sampled from the same initial noise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from antdiff import build
from antdiff.config import VANILLA, TrainConfig, make_config
from antdiff.errors import AntError
from antdiff.evaluate import Evaluator
from antdiff.metrics import draw_heldout_triples, heldout_losses
from antdiff.report import plot_transfer, write_experiment_report
from antdiff.resume import OUTPUTS
from antdiff.rundir import RunDir, read_config
from antdiff.tasks import IntervalPartition, clustering_from_spec
from antdiff.train import Trainer

BUDGETS = ("steps", "samples")
DEFAULT_HOLDOUT = 300  # held-out samples when the data set has no default (digits: 300)
FD_FEATURES = 128  # the feature net's dimension: FD needs more samples than this


# ----------------------------------------------------------------------------- the mixture
class MixtureDenoiser(nn.Module):
    """model(x, t, y): the specialist where t lies in [l, r] (inclusive), the generalist elsewhere.

    Works per sample, so a batch may mix timesteps; sampling loops call it with one t.
    """

    def __init__(self, generalist: nn.Module, specialist: nn.Module, interval: tuple[int, int]):
        super().__init__()
        self.generalist, self.specialist = generalist, specialist
        self.interval = (int(interval[0]), int(interval[1]))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.generalist, "num_classes", 0))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        inside = (t >= self.interval[0]) & (t <= self.interval[1])
        if bool(inside.all()):
            return self.specialist(x, t, y)
        if not bool(inside.any()):
            return self.generalist(x, t, y)
        out = torch.empty_like(x)
        for mask, model in ((inside, self.specialist), (~inside, self.generalist)):
            out[mask] = model(x[mask], t[mask], None if y is None else y[mask]).to(x.dtype)
        return out


# ----------------------------------------------------------------------------- the plan
def parse_intervals(spec: str, cfg: TrainConfig) -> IntervalPartition:
    """`timestep:K`, `log-snr:K`, ... (clustered on the run's schedule), or explicit inclusive
    `0:199,200:399,...`."""
    if spec and spec[0].isdigit():
        try:
            pairs = [tuple(int(v) for v in part.split(":")) for part in spec.split(",")]
        except ValueError:
            raise AntError(f"bad --intervals {spec!r}; use timestep:K or L:R,L:R,...") from None
        if any(len(p) != 2 for p in pairs):
            raise AntError(f"bad --intervals {spec!r}; each interval is L:R (inclusive)")
        return IntervalPartition(tuple(pairs), cfg.timesteps)  # checks they cover 0..T-1
    return clustering_from_spec(spec, build.schedule(cfg)).partition


@dataclass
class TransferPlan:
    """Everything that determines the experiment; `base` holds the shared TrainConfig values
    (TrainConfig's defaults for the rest, as `antdiff train`)."""

    base: dict[str, Any]
    intervals: str = "timestep:5"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    method: str = "vanilla"
    budget: str = "steps"
    out: str = "runs/transfer"
    runs: str | None = None  # where the run directories live (default: out); share it between
    # experiments to reuse runs (e.g. the specialists for a vanilla and a UW generalist)
    num_samples: int = 500
    sampler: str | None = None  # default: the objective's (DDIM, or Euler for flow matching)
    sample_steps: int = 50
    per_interval: int = 128  # held-out triples per interval
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.base.get("holdout") is None and self.base.get("dataset", "digits") != "digits":
            self.base = {**self.base, "holdout": DEFAULT_HOLDOUT}
        base = make_config(self.base)  # validates the shared settings
        if self.budget not in BUDGETS:
            raise AntError(f"unknown --budget {self.budget!r}; choose from {', '.join(BUDGETS)}")
        if not self.seeds:
            raise AntError("--seeds must be >= 1")
        if self.jobs < 1 or self.per_interval < 1 or self.sample_steps < 1:
            raise AntError("--jobs, --per-interval and --sample-steps must be >= 1")
        self.partition = parse_intervals(self.intervals, base)
        if self.intervals[0].isdigit() and self.method != "vanilla":
            raise AntError("an ANT generalist needs --intervals as a cluster spec (timestep:K)")

    @property
    def k(self) -> int:
        return self.partition.k

    @property
    def generalist_steps(self) -> int:
        return int(self.base.get("steps", TrainConfig.steps))

    def specialist_steps(self, j: int) -> int:
        steps = self.generalist_steps
        if self.budget == "steps":
            return steps
        return max(1, round(steps * int(self.partition.widths[j]) / self.partition.timesteps))

    def run_dir(self, seed: int, j: int | None) -> Path:
        """RUNS/seed{s}/generalist-{method}-{steps} or RUNS/seed{s}/specialist{j}-{steps}."""
        if j is None:
            name = f"generalist-{self.method}-{self.generalist_steps}"
        else:
            name = f"specialist{j}-{self.specialist_steps(j)}"
        return Path(self.runs or self.out) / f"seed{seed}" / name

    def config(self, seed: int, j: int | None) -> TrainConfig:
        """The generalist's (j None) or specialist j's training config for one seed."""
        steps = self.generalist_steps if j is None else self.specialist_steps(j)
        quiet = {
            "log_every": max(1, steps // 4),
            "checkpoint_every": steps,
            "keep_checkpoints": 1,
            "eval_every": 0,
        }
        if j is None:
            spec = self.intervals if not self.intervals[0].isdigit() else f"timestep:{self.k}"
            role = {"clusters": spec, "method": self.method}
        else:
            lo, hi = self.partition.intervals[j]
            role = {**VANILLA, "clusters": "timestep:1", "timestep_range": f"{lo}:{hi}"}
        out = str(self.run_dir(seed, j))
        return make_config({**self.base, **quiet, **role, "steps": steps, "seed": seed, "out": out})

    def all_configs(self) -> list[TrainConfig]:
        return [self.config(s, j) for s in self.seeds for j in (None, *range(self.k))]


# ----------------------------------------------------------------------------- execution
def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _pool_map(fn: Callable, items: Iterable, jobs: int) -> list:
    """map in this process (jobs=1) or in `jobs` spawned processes with cores/jobs threads each."""
    items = list(items)
    if jobs == 1 or len(items) <= 1:
        return [fn(item) for item in items]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        return list(pool.map(fn, items))


def train_or_resume(cfg: TrainConfig) -> str:
    """Train one run; a finished run with the same config is reused, a partial one resumed
    (a run directory trained with another config is refused)."""
    run = Path(cfg.out)
    resume = (run / "config.json").is_file()
    if resume:
        saved, wanted = read_config(run).to_dict(), cfg.to_dict()
        diff = sorted(k for k in wanted if k not in OUTPUTS and saved[k] != wanted[k])
        if diff != [] and diff != ["steps"]:
            raise AntError(f"{run} was trained with another config ({', '.join(diff)})")
        done = RunDir.open(run)
        if not diff and done.has_checkpoint() and done.load_checkpoint().step == cfg.steps:
            return cfg.out
    with Trainer.start(cfg, resume=resume) as trainer:
        trainer.fit()
    return cfg.out


def evaluate_seed(args: tuple[TransferPlan, int]) -> dict[str, Any]:
    """Sample metric of the generalist and of each mixture (same initial noise: paired), and
    paired held-out losses on interval j."""
    plan, seed = args
    gen_run = RunDir.open(plan.run_dir(seed, None))
    gen = build.trained_model(gen_run)
    specs = [build.trained_model(RunDir.open(plan.run_dir(seed, j))) for j in range(plan.k)]
    cfg = gen_run.cfg
    evaluator = Evaluator(
        cfg,
        gen_run.info,
        build.schedule(cfg),
        num=plan.num_samples,
        sampler=plan.sampler,
        steps=plan.sample_steps,
        seed=seed,
    )
    metric = "swd" if gen_run.info.kind == "points" else "fd"

    def quality(model: nn.Module) -> float:
        x, labels, g = evaluator.sample(model)
        return float(evaluator.sample_quality(x, labels, g)[metric])

    gen_value = quality(gen)
    mixtures = [
        quality(MixtureDenoiser(gen, spec, plan.partition.intervals[j]))
        for j, spec in enumerate(specs)
    ]
    _, heldout = build.load_data(cfg)
    if heldout is None:
        raise AntError("the held-out gap needs held-out data (--holdout N)")
    triples = draw_heldout_triples(
        heldout.x, plan.partition.intervals, n_per_interval=plan.per_interval, seed=0
    )
    loss_gen = heldout_losses(evaluator.loss_fn(gen), triples)
    gap, lg, ls = [], [], []
    for j, spec in enumerate(specs):
        mask = triples.interval == j
        diff = heldout_losses(evaluator.loss_fn(spec), triples)[mask] - loss_gen[mask]
        gap.append(float(diff.mean()))
        lg.append(float(loss_gen[mask].mean()))
        ls.append(lg[-1] + gap[-1])
    return {
        "seed": seed,
        "metric": metric,
        "generalist": gen_value,
        "mixture": mixtures,
        "ntg": [m - gen_value for m in mixtures],
        "heldout_generalist": lg,
        "heldout_specialist": ls,
        "heldout_gap": gap,
    }


def _spread(rows: list[list[float]]) -> dict[str, Any]:
    a = np.asarray(rows, dtype=np.float64)  # [S, k]
    n = a.shape[0]
    std = a.std(0, ddof=1) if n > 1 else np.full(a.shape[1], np.nan)
    return {
        "per_seed": a.tolist(),
        "mean": a.mean(0).tolist(),
        "std": [None if np.isnan(v) else float(v) for v in std],
        "sem": [None if np.isnan(v) else float(v / np.sqrt(n)) for v in std],
    }


def run_transfer(plan: TransferPlan) -> dict[str, Any]:
    """Train all runs, evaluate every seed, write transfer.json, transfer.png and report.html."""
    start = time.perf_counter()
    out = Path(plan.out)
    _check_samples(plan)
    configs = plan.all_configs()
    out.mkdir(parents=True, exist_ok=True)
    _pool_map(train_or_resume, configs, plan.jobs)
    trained = time.perf_counter()
    rows = _pool_map(evaluate_seed, [(plan, s) for s in plan.seeds], plan.jobs)
    result = summarise(plan, rows)
    result["time_s"] = {
        "train": round(trained - start, 1),
        "evaluate": round(time.perf_counter() - trained, 1),
    }
    (out / "transfer.json").write_text(json.dumps(result, indent=1))
    plot_transfer(result, result["heldout_gap_pct"], out / "transfer.png")
    write_experiment_report(out)
    return result


def summarise(plan: TransferPlan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The documented transfer.json content (see module docstring for the signs)."""
    settings = {
        "intervals_spec": plan.intervals,
        "method": plan.method,
        "budget": plan.budget,
        "num_samples": plan.num_samples,
        "sampler": plan.sampler,
        "sample_steps": plan.sample_steps,
        "per_interval": plan.per_interval,
        "base": plan.base,
    }
    spec = np.asarray([r["heldout_specialist"] for r in rows])
    gen = np.asarray([r["heldout_generalist"] for r in rows])
    return {
        "settings": settings,
        "intervals": [list(iv) for iv in plan.partition.intervals],
        "seeds": [r["seed"] for r in rows],
        "metric": rows[0]["metric"],
        "generalist_steps": plan.generalist_steps,
        "specialist_steps": [plan.specialist_steps(j) for j in range(plan.k)],
        "generalist": [r["generalist"] for r in rows],
        "mixture": [r["mixture"] for r in rows],
        "ntg": _spread([r["ntg"] for r in rows]),
        "heldout_generalist": gen.tolist(),
        "heldout_specialist": spec.tolist(),
        "heldout_gap": _spread([r["heldout_gap"] for r in rows]),
        # in percent of the generalist's loss on the interval, 100 (L_s / L_g - 1)
        "heldout_gap_pct": _spread((100.0 * (spec / gen - 1.0)).tolist()),
        "runs": {
            str(s): [str(plan.run_dir(s, j)) for j in (None, *range(plan.k))] for s in plan.seeds
        },
    }


def _check_samples(plan: TransferPlan) -> None:
    cfg = make_config(plan.base)
    data = build.reference_data(cfg)
    if data.kind == "image" and plan.num_samples <= FD_FEATURES:
        raise AntError(f"--num-samples must exceed {FD_FEATURES} (the FD feature dimension)")
    if cfg.heldout_size == 0 or cfg.heldout_size >= len(data):
        raise AntError(f"--holdout must be in 1..{len(data) - 1} for the held-out gap")

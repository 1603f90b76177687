"""`--clusters affinity:K:auto`: the interval tasks chosen from the run's own task affinity,
measured online during a warm-up (Go et al. 2023, Sec. 4, with the gradient-affinity cost).

Warm-up: the first W steps train vanilla (plain loss, uniform timesteps) over K provisional equal
intervals. At S snapshot steps spread evenly over the warm-up (W/S, 2W/S, ..., W) the task
affinity of B equal timestep bins is measured on the raw weights (analysis/gradients.py: a fixed
probe of P training samples, count-sketched gradients, each snapshot its own projection seed).
After the last one, the mean matrix goes through the exact DP with the affinity cost and the run
continues with its method over the K intervals found. The measurement runs on rank 0 and is
broadcast; the mean is rounded to 4 decimals (far below the sketch's error of about 0.03), so
that a run under torchrun, whose weights differ from one process's by float rounding, chooses
the same intervals as one process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from antdiff.analysis.gradients import LossSetup, affinity_matrix, bin_edges, make_probe
from antdiff.analysis.sketch import block_seed
from antdiff.config import TrainConfig, affinity_warmup
from antdiff.data import Dataset
from antdiff.diffusion import Schedule
from antdiff.distributed import Dist
from antdiff.errors import AntError
from antdiff.tasks import Clustering, ClusterSpec, cluster_timesteps

WARMUP = "warm-up"  # the clustering cost a run records while its tasks are provisional
SKETCH_DIM = 1024


def snapshot_steps(cfg: TrainConfig) -> list[int]:
    """The warm-up steps after which the affinity is measured (the last one: the warm-up's)."""
    w, s = affinity_warmup(cfg), cfg.affinity_snapshots
    return [round(w * (i + 1) / s) for i in range(s)]


def is_auto(cfg: TrainConfig) -> bool:
    return ClusterSpec.parse(cfg.clusters).auto


class AutoClusters:
    """The measurement of one run: call `observe` after every step of the warm-up."""

    def __init__(self, cfg: TrainConfig, data: Dataset, schedule: Schedule) -> None:
        self.cfg, self.schedule = cfg, schedule
        self.k = ClusterSpec.parse(cfg.clusters).k
        if cfg.affinity_probe > len(data):
            raise AntError(
                f"affinity_probe {cfg.affinity_probe} is more than the {len(data)} training samples"
            )
        labels = data.labels if cfg.conditional else None
        self.probe = make_probe(data.x, labels, cfg.affinity_probe, seed=cfg.seed)
        self.edges = bin_edges(cfg.timesteps, cfg.affinity_bins)
        self.setup = LossSetup(schedule.loss_path("cpu"), cfg.prediction, cfg.batch_size)
        self.at = snapshot_steps(cfg)
        self.matrices: list[np.ndarray] = []
        self.seconds = 0.0  # spent measuring so far

    def observe(self, step: int, model: nn.Module, dist: Dist) -> Clustering | None:
        """Measure at the snapshot steps; at the last one, the K intervals of the DP."""
        due = self.at[len(self.matrices)]
        if step > due:  # never silently train on with provisional tasks
            raise AntError(f"affinity:K:auto: the snapshot due at step {due} was missed")
        if step < due:
            return None
        start = time.perf_counter()
        matrix = torch.zeros(len(self.edges) - 1, len(self.edges) - 1, dtype=torch.float64)
        if dist.main:
            matrix = torch.from_numpy(
                affinity_matrix(
                    model,
                    self.probe,
                    self.edges,
                    self.setup,
                    sketch_dim=SKETCH_DIM,
                    seed=block_seed(self.cfg.seed, step),
                )
            )
        self.matrices.append(dist.broadcast(matrix).numpy())
        self.seconds += time.perf_counter() - start
        if len(self.matrices) < len(self.at):
            return None
        return cluster_timesteps("affinity", self.k, self.schedule, self.affinity)

    @property
    def affinity(self) -> np.ndarray:
        """The mean of the snapshots, rounded (see the module docstring)."""
        return np.round(np.mean(self.matrices, axis=0), 4)

    def record(self, chosen: Clustering, step: int, warmup_seconds: float) -> dict[str, Any]:
        """What tasks.json says of the choice."""
        return {
            "cost": "affinity",
            "k": self.k,
            "step": step,
            "snapshots": self.at,
            "bins": self.cfg.affinity_bins,
            "probe": self.cfg.affinity_probe,
            "sketch_dim": SKETCH_DIM,
            "weights": "raw",
            "intervals": [list(iv) for iv in chosen.partition.intervals],
            "measure_seconds": round(self.seconds, 3),
            "warmup_seconds": round(warmup_seconds, 3),
        }

    def state_dict(self) -> dict[str, Any]:
        matrices = torch.from_numpy(np.array(self.matrices, dtype=np.float64))
        return {"matrices": matrices, "seconds": self.seconds, "at": torch.tensor(self.at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The run's own snapshot steps: a resume may change --steps, and with it the default
        warm-up, but not a schedule already begun."""
        self.matrices = list(state["matrices"].numpy())
        self.seconds = float(state["seconds"])
        self.at = [int(v) for v in state.get("at", self.at)]
        if self.at[-1] >= self.cfg.steps:
            raise AntError(
                f"affinity:K:auto: this run's warm-up ends at step {self.at[-1]}; "
                f"--steps must be more than that, got {self.cfg.steps}"
            )

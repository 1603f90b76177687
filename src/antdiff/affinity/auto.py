"""`--clusters affinity:K:auto`: the interval tasks chosen from the run's own task affinity,
measured online during a warm-up (Go et al. 2023, Sec. 4, with the gradient-affinity cost).

Warm-up: the first W steps train vanilla (plain loss, uniform timesteps) over K provisional equal
intervals. At S snapshot steps spread evenly over the warm-up (W/S, 2W/S, ..., W) the task
affinity of B equal timestep bins is measured on the raw weights (gradients.py: a fixed probe of
P training samples, count-sketched gradients, each snapshot its own projection seed). After the
last one, the mean matrix goes through the exact DP with the affinity cost and the run continues
with its method over the K intervals found. The measurement runs on rank 0 and is broadcast; the
mean is rounded to 4 decimals (far below the sketch's error of about 0.03), so that a run under
torchrun, whose weights differ from one process's by float rounding, chooses the same intervals
as one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from antdiff.affinity.gradients import LossSetup, affinity_matrix, bin_edges, make_probe
from antdiff.affinity.sketch import block_seed
from antdiff.data import Dataset
from antdiff.diffusion import Schedule
from antdiff.distributed import Dist
from antdiff.errors import AntError
from antdiff.tasks import Clustering, cluster_timesteps

SKETCH_DIM = 1024


def snapshot_steps(warmup: int, snapshots: int) -> list[int]:
    """The warm-up steps after which the affinity is measured (the last one: the warm-up's)."""
    return [round(warmup * (i + 1) / snapshots) for i in range(snapshots)]


@dataclass(frozen=True)
class AutoSettings:
    """What the measurement of one run needs from its config (built by `antdiff.build`)."""

    k: int  # the number of interval tasks to choose
    warmup: int  # W: vanilla steps before the tasks are chosen
    snapshots: int  # S: measurements spread over the warm-up, averaged
    bins: int  # B: equal timestep bins
    probe: int  # P: fixed training samples whose gradients are measured
    steps: int  # the run's total steps (the warm-up must end before them)
    timesteps: int
    prediction: str  # the objective's target (epsilon, v, x0, flow)
    micro_batch: int  # probe samples per forward/backward
    conditional: bool  # the probe keeps its labels
    seed: int  # the run's seed: the probe, and with the step each snapshot's projection


class AutoClusters:
    """The measurement of one run: call `measure_if_due` after every step of the warm-up."""

    def __init__(self, settings: AutoSettings, data: Dataset, schedule: Schedule) -> None:
        s = self.settings = settings
        self.schedule, self.k = schedule, s.k
        if s.probe > len(data):
            raise AntError(
                f"affinity_probe {s.probe} is more than the {len(data)} training samples"
            )
        labels = data.labels if s.conditional else None
        self.probe = make_probe(data.x, labels, s.probe, seed=s.seed)
        self.edges = bin_edges(s.timesteps, s.bins)
        self.setup = LossSetup(schedule.loss_path("cpu"), s.prediction, s.micro_batch)
        self.at = snapshot_steps(s.warmup, s.snapshots)
        self.matrices: list[np.ndarray] = []
        self.seconds = 0.0  # spent measuring so far

    def measure_if_due(self, step: int, model: nn.Module, dist: Dist) -> Clustering | None:
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
                    seed=block_seed(self.settings.seed, step),
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
            "bins": self.settings.bins,
            "probe": self.settings.probe,
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
        if self.at[-1] >= self.settings.steps:
            raise AntError(
                f"affinity:K:auto: this run's warm-up ends at step {self.at[-1]}; "
                f"--steps must be more than that, got {self.settings.steps}"
            )

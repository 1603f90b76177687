"""`follow[:floor,decay,importance]`: ANT as a timestep *sampler* instead of a loss weighter.

A weighting w of the interval losses with a fixed sampling and a density proportional to w with
unit weight have the same expected gradient and different variances (Kingma & Gao, NeurIPS
2023, "Understanding diffusion objectives as the ELBO ..."). This sampler draws interval k with
probability

    p_k = (1 - floor) * wbar_k / sum_j wbar_j + floor * base_k,    base_k = |I_k| / T,

where wbar is a bias-corrected exponential moving average (decay `decay`) of the MTL method's
weights w_k on the per-interval MEAN losses (the engine's `task_weights`: the update is
sum_k w_k grad L_k, so the equivalent density gives interval k mass proportional to w_k, not
to w_k |I_k|), and draws t uniformly inside the interval. `base` is the interval's share of
the uniform density, so no interval starves while floor > 0. Before any weight is seen,
p = base (uniform t).

The model must not get the emphasis twice (once from the density, once from the method's
weights): train with the `sampled:METHOD` wrapper (antdiff.mtl.sampled), whose model objective
is sum_k shares_k L_k with the shares this sampler gives for the batch it drew:

* importance 0 (the pure sampler): shares_k = n_k / B, i.e. the plain mean over the B samples;
* importance 1: shares_k = (n_k / B) (base_k / p_k), an unbiased (Horvitz-Thompson) estimate of
  the uniform-t objective, so only the variance changes;
* importance 2: shares_k = (n_k / B) (wbar_k / p_k), unbiased for the method's own weighted
  objective sum_k wbar_k L_k: the density only shapes the variance. At uncertainty
  weighting's stationary weights on 8x8 digits, the variance-optimal density lies between
  uniform t and p proportional to w, which a large floor approximates.

The state (the moving average and its counts) is in `state_dict`; draws are a pure function
of that state and the generator, so every rank draws the same global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.options import Param
from antdiff.tasks.partition import IntervalPartition
from antdiff.tasks.timesteps import TimestepSampler, check_batch


class FollowSampler(TimestepSampler):
    """Interval probabilities that follow the MTL method's task weights (module docstring)."""

    name = "follow"
    follows_method = True  # train with `sampled:METHOD` (the emphasis is applied once)

    shapes_density = True
    params = (
        Param("floor", float, 0.1, 0.0, 1.0),
        Param("decay", float, 0.95, 0.0, 1.0, open_high=True),
        Param("importance", int, 0, 0, 2),
    )

    def __init__(
        self,
        partition: IntervalPartition,
        floor: float = 0.1,
        decay: float = 0.95,
        importance: int = 0,
    ) -> None:
        super().__init__(partition)
        values = self.checked(floor=floor, decay=decay, importance=importance)
        self.floor, self.decay, self.mode = values["floor"], values["decay"], values["importance"]
        k = partition.k
        self.base = partition.widths.double() / self.T
        self.ema = torch.zeros(k, dtype=torch.float64)
        self.seen = torch.zeros(k, dtype=torch.long)

    def weights(self) -> Tensor:
        """The smoothed task weights wbar [K], normalised to sum 1 (base before any is seen);
        a task never seen yet gets the mean of the others."""
        return smoothed(self.ema, self.seen, self.decay, self.base)

    def probabilities(self) -> Tensor:
        """p_k [K] = (1 - floor) wbar_k + floor base_k."""
        return (1 - self.floor) * self.weights() + self.floor * self.base

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        check_batch(batch_size)
        task = torch.multinomial(self.probabilities(), batch_size, True, generator=generator)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        lefts, widths = self.partition.lefts[task], self.partition.widths[task]
        return lefts + (u * widths).long().clamp_max(widths - 1), task

    def density(self) -> np.ndarray:
        per_t = self.probabilities() / self.partition.widths.double()
        return np.repeat(per_t.numpy(), self.partition.widths.numpy())

    def shares(self, task: Tensor) -> Tensor:
        """The model objective's coefficients [K] on the per-task mean losses of a batch drawn
        now with task ids `task` (the `sampled:` wrapper's `set_shares`)."""
        shares = super().shares(task)
        if self.mode == 1:
            shares = shares * self.base / self.probabilities()
        elif self.mode == 2:
            shares = shares * self.weights() / self.probabilities()
        return shares

    def after_step(self, t: Tensor, losses: Tensor | None, task_weights: Tensor) -> None:
        """Fold the method's task weights [K] of the step just taken into the average; only the
        tasks with a sample in the global batch `t` (their weights are defined)."""
        w = torch.as_tensor(task_weights).detach().double().cpu()
        k = self.partition.k
        if w.shape != (k,):
            raise AntError(f"{self.name} expects {k} task weights, got {tuple(w.shape)}")
        present = self.present(t) & torch.isfinite(w) & (w >= 0)
        fold(self.ema, self.seen, present, w, self.decay)

    def present(self, t: Tensor) -> Tensor:
        """Which tasks [K] have a sample in the global batch `t`."""
        return torch.bincount(self.partition.task_of(t.cpu()), minlength=self.partition.k) > 0

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = self.partition.k
        ema, seen = state.get("ema"), state.get("seen")
        if not isinstance(ema, Tensor) or not isinstance(seen, Tensor) or ema.shape != (k,):
            raise AntError(f"{self.name} sampler state does not fit {k} tasks")
        self.ema, self.seen = ema.clone().double(), seen.clone().long()


def fold(ema: Tensor, seen: Tensor, present: Tensor, values: Tensor, decay: float) -> None:
    """One step of the exponential moving averages `ema` [K] (in place) at the tasks `present`;
    `seen` counts each task's updates, for the bias correction of `smoothed`."""
    ema[present] = decay * ema[present] + (1 - decay) * values[present]
    seen[present] += 1


def smoothed(ema: Tensor, seen: Tensor, decay: float, fallback: Tensor) -> Tensor:
    """The bias-corrected averages ema_k / (1 - decay^seen_k) [K] normalised to sum 1
    (`fallback` before any is seen); a task never seen yet gets the mean of the others."""
    if not bool((seen > 0).any()):
        return fallback.clone()
    known = seen > 0
    w = torch.zeros_like(ema)
    w[known] = ema[known] / (1 - decay ** seen[known].double())
    w[~known] = w[known].mean()
    total = w.sum()
    return w / total if bool(total > 0) else fallback.clone()  # all zero: nothing to follow yet

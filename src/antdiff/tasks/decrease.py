"""`decrease[:floor,decay,importance,every,eps]`: draw intervals by the first-order decrease of
the total loss that a step on each would give (Kim et al., CVPR 2025: sample the timesteps whose
step is predicted to lower the objective most).

A step along w_i grad L_i (w: the MTL method's task weights on the interval mean losses)
changes the total loss sum_j L_j by -lr w_i sum_j <grad L_i, grad L_j> to first order. With
the Gramian G of the interval gradients (G_ij = <grad L_i, grad L_j>), interval i's predicted
decrease is d_i = w_i sum_j G_ij, and this sampler draws interval i with probability

    p_i = (1 - floor) qbar_i / sum_j qbar_j + floor base_i,    base_i = |I_i| / T,
    q_i = max(eps, d_i / max_j |d_j|),

then t uniformly inside it. qbar is a bias-corrected exponential moving average of q (decay
`decay` per Gramian, each interval updated when it has samples in the batch). eps is relative
to the largest |d| of the same Gramian, so it does not depend on the gradients' scale; an
interval whose step would raise the total loss (d_i < 0: it conflicts with the others) keeps
eps, and the floor keeps every interval at >= floor base_i. Before any Gramian, p = base.

G comes from the engine (antdiff.mtl.engine): every Gramian a step computes (a gradient
method's refresh: pcgrad, nash) is used, and every `every` steps the sampler asks for one,
which a loss-based method (uw) pays with the per-task path, one forward/backward per interval
sub-batch in place of one pass, inside the step (so in the run's training time).

The model must get the emphasis once: train with `sampled:METHOD`, whose objective is
sum_k shares_k L_k with the shares of `follow` (antdiff.tasks.follow): importance 0 the plain
mean over the samples (unit loss weight), 1 unbiased for the uniform-t objective, 2 unbiased
for the method's weighted objective (a moving average of its weights, as `follow` keeps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.options import Param
from antdiff.tasks.follow import FollowSampler, fold, smoothed
from antdiff.tasks.partition import IntervalPartition


class DecreaseSampler(FollowSampler):
    """Interval probabilities after the predicted decrease w_i sum_j G_ij (module docstring)."""

    name = "decrease"
    needs_gramian = True
    params = (
        Param("floor", float, 0.1, 0.0, 1.0),
        Param("decay", float, 0.9, 0.0, 1.0, open_high=True),
        Param("importance", int, 0, 0, 2),
        Param("every", int, 10, 1, 1e6, help="steps between Gramians the sampler asks for"),
        Param("eps", float, 0.01, 0.0, 1.0, open_low=True),
    )

    def __init__(
        self,
        partition: IntervalPartition,
        floor: float = 0.1,
        decay: float = 0.9,
        importance: int = 0,
        every: int = 10,
        eps: float = 0.01,
    ) -> None:
        values = self.checked(floor=floor, decay=decay, importance=importance, every=every, eps=eps)
        super().__init__(partition, floor, decay, importance)
        self.every, self.eps = values["every"], values["eps"]
        self.gain = torch.zeros(partition.k, dtype=torch.float64)
        self.gain_seen = torch.zeros(partition.k, dtype=torch.long)

    def decrease(self, gramian: Tensor, task_weights: Tensor) -> Tensor:
        """d_i = w_i sum_j G_ij [K]: the first-order decrease of sum_j L_j per unit step on i."""
        return task_weights.double() * gramian.double().sum(1)

    def gains(self) -> Tensor:
        """qbar [K] normalised to sum 1 (base before any Gramian)."""
        return smoothed(self.gain, self.gain_seen, self.decay, self.base)

    def probabilities(self) -> Tensor:
        """p_i [K] = (1 - floor) qbar_i + floor base_i."""
        return (1 - self.floor) * self.gains() + self.floor * self.base

    def gramian_due(self, step: int) -> bool:
        return step % self.every == 0

    def after_gramian(self, t: Tensor, task_weights: Tensor, gramian: Tensor) -> None:
        """Fold q = max(eps, d / max|d|) of the tasks in the batch `t` into their averages
        (`after_step`, inherited, has folded the method's weights, for importance 2)."""
        k = self.partition.k
        g = torch.as_tensor(gramian).detach().double().cpu()
        if g.shape != (k, k):
            raise AntError(f"{self.name} expects a {k} x {k} Gramian, got {tuple(g.shape)}")
        w = torch.as_tensor(task_weights).detach().double().cpu()
        if w.shape != (k,):
            raise AntError(f"{self.name} expects {k} task weights, got {tuple(w.shape)}")
        d = self.decrease(g, w)
        present = self.present(t) & torch.isfinite(d)
        if not bool(present.any()):
            return
        scale = d[present].abs().max()
        if not bool(scale > 0):  # no gradient, or no weight: nothing to rank the tasks by
            return
        fold(self.gain, self.gain_seen, present, (d / scale).clamp_min(self.eps), self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "gain": self.gain.clone(),
            "seen_gain": self.gain_seen.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        gain, seen = state.get("gain"), state.get("seen_gain")
        k = self.partition.k
        if not isinstance(gain, Tensor) or not isinstance(seen, Tensor) or gain.shape != (k,):
            raise AntError(f"{self.name} sampler state does not fit {k} tasks")
        self.gain, self.gain_seen = gain.clone().double(), seen.clone().long()

"""Timestep samplers (`--timestep-sampling`) that return (t, task_id): the task id travels with
every sample.

* `uniform`: t ~ U{0..T-1}, the usual L_simple sampling (Ho et al. 2020).
* `stratified`: the paper's scheme (Go et al. 2023, Sec. 5; official `util/uw_util.py`): B/k
  samples per interval, t uniform inside it; when B is not divisible by k the remainder goes to
  randomly chosen intervals. With intervals of unequal width this is NOT the uniform timestep
  distribution of L_simple; record the scheme with the run.
* `logit-normal[:m,s]`: t/T = sigmoid(u), u ~ N(m, s^2) (Esser et al. 2024, SD3, Sec. 3.1;
  diffusers' `compute_density_for_timestep_sampling`); default m = 0, s = 1.
* `mode[:scale]`: t/T = 1 - u - scale (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1) (the same paper's
  mode sampling, heavier in the middle for scale > 0); default scale 1.29.
* `loss-aware[:history]`: p_t proportional to sqrt(E[L_t^2]) over the last `history` losses at
  each t, mixed with 0.1% uniform, once every t has them (uniform before); each sample is
  weighted by 1 / (T p_t), so the objective stays the uniform one in expectation (Nichol &
  Dhariwal 2021, Improved DDPM, Sec. 3.3); over K interval tasks by (P_k / W_k) / p_t, so each
  task's loss stays its interval's uniform mean. Its state is checkpointed.

Besides `sample`, each sampler gives `density()`, the probabilities it draws t with now [T].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import logit, ndtr

from antdiff.errors import AntError
from antdiff.options import Param, check_options, options_help, parse_options
from antdiff.tasks.partition import IntervalPartition


class TimestepSampler:
    """Base: draws t, looks up the task ids; no importance weights, no state.

    A sampler declares what it needs instead of being recognised by name: `params` (its options,
    checked by `antdiff.options`), `stratified` (it draws B/K samples per task, so the batch
    must hold at least K), `shapes_density` (it gives the intervals other weights than their
    widths, which `--method mean` over K > 1 tasks would undo) and `needs_losses`."""

    name = "uniform"
    params: ClassVar[tuple[Param, ...]] = ()
    stratified: ClassVar[bool] = False
    shapes_density: ClassVar[bool] = False
    needs_losses: ClassVar[bool] = False  # True: the trainer gathers the losses for `after_step`
    follows_method: ClassVar[bool] = False  # draws by the method's weights (`sampled:` methods)
    #: True: it learns from the task Gramian; the trainer asks the engine for one on the steps
    #: `gramian_due` names and hands every one a step computed to `after_gramian`
    needs_gramian: ClassVar[bool] = False

    def __init__(self, partition: IntervalPartition) -> None:
        self.partition = partition
        self.T = partition.timesteps

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(batch_size)
        t = self.draw(batch_size, generator)
        return t, self.partition.task_of(t)

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.T, (batch_size,), generator=generator)

    @classmethod
    def checked(cls, **values: Any) -> dict[str, Any]:
        """`values` of the declared `params`, checked (also when built directly)."""
        return check_options(f"timestep sampling {cls.name}", cls.params, values)

    def density(self) -> np.ndarray:
        return np.full(self.T, 1.0 / self.T)

    def importance(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights that keep the objective unbiased (None: all 1)."""
        return None

    def shares(self, task: torch.Tensor) -> torch.Tensor:
        """The coefficients [K] of a batch's per-task mean losses in the model's objective
        when the method takes them (`sampled:`): n_k / B, the plain mean over the samples."""
        n = torch.bincount(task.long().cpu(), minlength=self.partition.k).double()
        return n / n.sum()

    def gramian_due(self, step: int) -> bool:
        """Whether step `step` (0-based) should compute the task Gramian for this sampler."""
        return False

    def after_step(
        self, t: torch.Tensor, losses: torch.Tensor | None, task_weights: torch.Tensor
    ) -> None:
        """Called after every optimizer step with the global batch's timesteps `t`, their
        per-sample losses (None unless `needs_losses`) and the method's task weights [K].
        A fixed density ignores them."""

    def after_gramian(
        self, t: torch.Tensor, task_weights: torch.Tensor, gramian: torch.Tensor
    ) -> None:
        """Called after `after_step` with the task Gramian [K, K] of the step, when it computed
        one (asked for by `gramian_due`, or a gradient method's refresh)."""

    def step_done(
        self,
        t: torch.Tensor,
        losses: torch.Tensor | None,
        task_weights: torch.Tensor,
        gramian: torch.Tensor | None = None,
    ) -> None:
        """What the trainer calls after each optimizer step: `after_step`, then `after_gramian`
        if the step computed the task Gramian."""
        self.after_step(t, losses, task_weights)
        if gramian is not None:
            self.after_gramian(t, task_weights, gramian)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class UniformSampler(TimestepSampler):
    """t ~ U{0..T-1} (the usual L_simple sampling); task ids by lookup."""


class StratifiedSampler(TimestepSampler):
    """floor(B/k) samples per interval plus the remainder spread over random intervals."""

    name = "stratified"
    stratified = True

    def counts(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = self.partition.k
        counts = torch.full((k,), batch_size // k, dtype=torch.long)
        extra = torch.randperm(k, generator=generator)[: batch_size % k]
        counts[extra] += 1
        return counts

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(batch_size)
        counts = self.counts(batch_size, generator)
        task = torch.repeat_interleave(torch.arange(self.partition.k), counts)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        lefts, widths = self.partition.lefts[task], self.partition.widths[task]
        t = lefts + (u * widths).long().clamp_max(widths - 1)
        return t, task

    def density(self) -> np.ndarray:
        widths = self.partition.widths.numpy().astype(np.float64)
        per_t = 1.0 / (self.partition.k * widths)
        return np.repeat(per_t, self.partition.widths.numpy())


class RangeSampler(TimestepSampler):
    """t ~ U{L..R} only: a specialist on one interval (negative transfer, O2); ids by lookup."""

    name = "range"

    def __init__(self, bounds: tuple[int, int], partition: IntervalPartition) -> None:
        super().__init__(partition)
        self.bounds = bounds

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        lo, hi = self.bounds
        return torch.randint(lo, hi + 1, (batch_size,), generator=generator)

    def density(self) -> np.ndarray:
        p = np.zeros(self.T)
        p[self.bounds[0] : self.bounds[1] + 1] = 1.0 / (self.bounds[1] - self.bounds[0] + 1)
        return p


class LogitNormalSampler(TimestepSampler):
    """t = floor(T sigmoid(u)), u ~ N(mean, std^2) (SD3's logit-normal)."""

    name = "logit-normal"
    shapes_density = True
    params = (
        Param("mean", float, 0.0, -10.0, 10.0),
        Param("std", float, 1.0, 0.0, 10.0, open_low=True),
    )

    def __init__(self, partition: IntervalPartition, mean: float = 0.0, std: float = 1.0):
        super().__init__(partition)
        self.mean, self.std = self.checked(mean=mean, std=std).values()

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        t = torch.sigmoid(u * self.std + self.mean) * self.T
        return t.long().clamp_max(self.T - 1)

    def density(self) -> np.ndarray:
        """P(t) = Phi((logit((t+1)/T) - m) / s) - Phi((logit(t/T) - m) / s)."""
        with np.errstate(divide="ignore"):
            z = (logit(np.arange(self.T + 1) / self.T) - self.mean) / self.std
        return np.diff(ndtr(z))


class ModeSampler(TimestepSampler):
    """t = floor(T f(u)), f(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1)."""

    name = "mode"
    shapes_density = True
    # f decreases (f' = -1 - scale (1 - pi/2 sin(pi u)) < 0) for -1 <= scale < 1 / (pi/2 - 1)
    params = (Param("scale", float, 1.29, -1.0, 1.75),)

    def __init__(self, partition: IntervalPartition, scale: float = 1.29) -> None:
        super().__init__(partition)
        self.scale = self.checked(scale=scale)["scale"]

    @staticmethod
    def _f(u: Any, scale: float) -> Any:
        cos = torch.cos if isinstance(u, torch.Tensor) else np.cos
        return 1 - u - scale * (cos(math.pi * u / 2) ** 2 - 1 + u)

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        return (self._f(u, self.scale) * self.T).long().clamp(0, self.T - 1)

    def density(self) -> np.ndarray:
        """P(t) = |f^-1(t/T) - f^-1((t+1)/T)| (f decreases from 1 to 0), by interpolation."""
        u = np.linspace(0, 1, 100_001)
        inverse = np.interp(np.arange(self.T + 1) / self.T, self._f(u, self.scale)[::-1], u[::-1])
        return -np.diff(inverse)


class LossAwareSampler(TimestepSampler):
    """Improved DDPM's second-moment resampler with importance weights (module docstring)."""

    name = "loss-aware"
    needs_losses = True
    shapes_density = True
    params = (Param("history", int, 10, 1, 10_000),)
    UNIFORM = 1e-3

    def __init__(self, partition: IntervalPartition, history: int = 10) -> None:
        super().__init__(partition)
        history = self.checked(history=history)["history"]
        self.losses = torch.zeros(self.T, history, dtype=torch.float64)
        self.counts = torch.zeros(self.T, dtype=torch.long)

    def probabilities(self) -> torch.Tensor:
        if bool((self.counts < self.losses.shape[1]).any()):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = self.losses.square().mean(1).sqrt()
        p = p / p.sum()
        return p * (1 - self.UNIFORM) + self.UNIFORM / self.T

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.multinomial(self.probabilities(), batch_size, True, generator=generator)

    def density(self) -> np.ndarray:
        return self.probabilities().numpy()

    def mass(self) -> torch.Tensor:
        """P_k [K]: the probability of drawing a t in each interval now."""
        p, part = self.probabilities(), self.partition
        task = part.task_of(torch.arange(self.T))
        return torch.zeros(part.k, dtype=torch.float64).index_add_(0, task, p)

    def shares(self, task: torch.Tensor) -> torch.Tensor:
        """(n_k / B) (W_k / T) / P_k: with the per-task importance weights, the uniform
        objective sum_k (W_k / T) L_k in expectation (the anchor an `anchored:` method keeps)."""
        widths = self.partition.widths.double()
        return super().shares(task) * (widths / self.T) / self.mass()

    def importance(self, t: torch.Tensor) -> torch.Tensor:
        """(P_k / W_k) / p_t for t in task k (mass P_k, width W_k): each task's mean loss stays
        the uniform mean over its interval; with one task, Improved DDPM's 1 / (T p_t)."""
        p, widths = self.probabilities(), self.partition.widths.double()
        t = t.cpu()
        return ((self.mass() / widths)[self.partition.task_of(t)] / p[t]).float()

    def after_step(
        self, t: torch.Tensor, losses: torch.Tensor | None, task_weights: torch.Tensor
    ) -> None:
        """Shift each sample's loss into the history of its t (in batch order)."""
        if losses is None:
            raise AntError("loss-aware timestep sampling needs the batch's per-sample losses")
        n = self.losses.shape[1]
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            if self.counts[ti] == n:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, self.counts[ti]] = li
                self.counts[ti] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.counts = state["losses"].clone(), state["counts"].clone()


TIMESTEP_SAMPLINGS: dict[str, type[TimestepSampler]] = {
    "uniform": UniformSampler,
    "stratified": StratifiedSampler,
    "logit-normal": LogitNormalSampler,
    "mode": ModeSampler,
    "loss-aware": LossAwareSampler,
}


def timestep_sampling(spec: str) -> tuple[type[TimestepSampler], dict[str, Any]]:
    """The sampler class of `spec` (`--timestep-sampling`, e.g. `logit-normal:0,1` or
    `logit-normal:mean=0,std=1`) and its checked options, without building it."""
    name, _, args = spec.partition(":")
    cls = TIMESTEP_SAMPLINGS.get(name)
    if cls is None:
        names = ", ".join(TIMESTEP_SAMPLINGS)
        raise AntError(f"unknown timestep sampling {name!r}; choose from {names}")
    return cls, parse_options(f"timestep sampling {name}", cls.params, args)


def build_timestep_sampler(spec: str, partition: IntervalPartition) -> TimestepSampler:
    """The timestep sampling `spec` over the tasks of `partition`."""
    cls, options = timestep_sampling(spec)
    return cls(partition, **options)


def timestep_sampling_help() -> str:
    """Each sampler that has options, with them (for the help text)."""
    return "; ".join(
        f"{name}: {options_help(cls.params)}"
        for name, cls in TIMESTEP_SAMPLINGS.items()
        if cls.params
    )


def check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise AntError(f"batch size must be >= 1, got {batch_size}")

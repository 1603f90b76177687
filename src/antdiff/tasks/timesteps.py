"""Timestep samplers (`--timestep-sampling`) that return (t, task_id): the task id travels with
every sample.

`uniform` is the usual L_simple sampling (Ho et al. 2020); `stratified` is the paper's scheme
(Go et al. 2023, Sec. 5; official code `util/uw_util.py`): B/k samples per interval,
t uniform inside it. When B is not divisible by k the remainder goes to randomly chosen intervals,
so every interval keeps the same expected share. With intervals of unequal width this is NOT the
uniform timestep distribution of L_simple; record the scheme with the run.
"""

from __future__ import annotations

import torch

from antdiff.errors import AntError
from antdiff.tasks.partition import IntervalPartition


class UniformSampler:
    """t ~ U{0..T-1} (the usual L_simple sampling); task ids by lookup."""

    name = "uniform"

    def __init__(self, partition: IntervalPartition) -> None:
        self.partition = partition

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(batch_size)
        t = torch.randint(0, self.partition.timesteps, (batch_size,), generator=generator)
        return t, self.partition.task_of(t)


class StratifiedSampler:
    """floor(B/k) samples per interval plus the remainder spread over random intervals."""

    name = "stratified"

    def __init__(self, partition: IntervalPartition) -> None:
        self.partition = partition

    def counts(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = self.partition.k
        counts = torch.full((k,), batch_size // k, dtype=torch.long)
        extra = torch.randperm(k, generator=generator)[: batch_size % k]
        counts[extra] += 1
        return counts

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(batch_size)
        counts = self.counts(batch_size, generator)
        task = torch.repeat_interleave(torch.arange(self.partition.k), counts)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        lefts, widths = self.partition.lefts[task], self.partition.widths[task]
        t = lefts + (u * widths).long().clamp_max(widths - 1)
        return t, task


class RangeSampler:
    """t ~ U{L..R} only: a specialist on one interval (negative transfer, O2); ids by lookup."""

    name = "range"

    def __init__(self, bounds: tuple[int, int], partition: IntervalPartition) -> None:
        self.bounds, self.partition = bounds, partition

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(batch_size)
        t = torch.randint(self.bounds[0], self.bounds[1] + 1, (batch_size,), generator=generator)
        return t, self.partition.task_of(t)


TimestepSampler = UniformSampler | StratifiedSampler | RangeSampler
TIMESTEP_SAMPLINGS = {"uniform": UniformSampler, "stratified": StratifiedSampler}


def build_timestep_sampler(name: str, partition: IntervalPartition) -> TimestepSampler:
    """The timestep sampling `name` (`--timestep-sampling`) over the tasks of `partition`."""
    if name not in TIMESTEP_SAMPLINGS:
        raise AntError(
            f"unknown timestep sampling {name!r}; choose from {', '.join(TIMESTEP_SAMPLINGS)}"
        )
    return TIMESTEP_SAMPLINGS[name](partition)


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise AntError(f"batch size must be >= 1, got {batch_size}")

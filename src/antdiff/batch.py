"""The global batch of a training step, a pure function of (seed, step): data indices,
timesteps with their task ids, noise and label dropout. It is the same whatever the number of
processes (each rank takes its slice) and after a resume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from antdiff.config import TrainConfig
from antdiff.tasks import TimestepSampler


@dataclass
class Batch:
    """One global batch; every tensor is indexed by sample, task ids are explicit."""

    index: torch.Tensor  # [B] rows of the data set
    t: torch.Tensor  # [B] timesteps
    task: torch.Tensor  # [B] task (interval) ids
    noise: torch.Tensor  # [B, ...]
    drop: torch.Tensor  # [B] bool: use the null label (classifier-free guidance training)
    weight: torch.Tensor  # [B] importance weight of each sample's loss (loss-aware sampling)
    frac: torch.Tensor | None = None  # [B] flow matching: t's offset inside its bin, U[0, 1)


def draw_batch(
    cfg: TrainConfig, n_data: int, shape: tuple[int, ...], sampler: TimestepSampler, step: int
) -> Batch:
    """The global batch of `step`, a pure function of (seed, step) and the sampler's state."""
    seed = int(np.random.SeedSequence([cfg.seed, step]).generate_state(1)[0])
    g = torch.Generator().manual_seed(seed)
    t, task = sampler.sample(cfg.batch_size, g)
    weight = sampler.importance(t)
    weight = torch.ones(cfg.batch_size) if weight is None else weight
    index = torch.randint(0, n_data, (cfg.batch_size,), generator=g)
    noise = torch.randn((cfg.batch_size, *shape), generator=g)
    drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
    perm = torch.randperm(cfg.batch_size, generator=g)  # mix tasks across ranks' slices
    frac = None  # drawn last: DDPM batches are what they were before flow matching existed
    if cfg.objective == "flow":
        frac = torch.rand(cfg.batch_size, generator=g, dtype=torch.float64)
    return Batch(index[perm], t[perm], task[perm], noise[perm], drop[perm], weight[perm], frac)

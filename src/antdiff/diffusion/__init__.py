"""Diffusion itself: noise schedules and SNR, the per-sample denoising loss, fixed per-timestep
loss weightings (Min-SNR, P2, ...) and reverse-diffusion samplers (through diffusers)."""

from antdiff.diffusion.loss import PREDICTIONS, per_sample_loss, q_sample, target
from antdiff.diffusion.samplers import SAMPLERS, generate, make_scheduler
from antdiff.diffusion.schedule import SCHEDULES, NoiseSchedule
from antdiff.diffusion.weighting import (
    WEIGHTINGS,
    FixedWeighting,
    LearnedWeighting,
    LossWeighting,
    build_weighting,
    sample_weighting,
)

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "WEIGHTINGS",
    "FixedWeighting",
    "LearnedWeighting",
    "LossWeighting",
    "NoiseSchedule",
    "build_weighting",
    "generate",
    "make_scheduler",
    "per_sample_loss",
    "q_sample",
    "sample_weighting",
    "target",
]

"""Diffusion itself: noise schedules and SNR (DDPM) or the flow-matching path, the per-sample
denoising loss, fixed per-timestep loss weightings (Min-SNR, P2, ...) and samplers (through
diffusers)."""

from antdiff.diffusion.flow import FlowPath
from antdiff.diffusion.loss import PREDICTIONS, VELOCITY, per_sample_loss, q_sample, target
from antdiff.diffusion.samplers import SAMPLERS, generate, make_scheduler
from antdiff.diffusion.schedule import SCHEDULES, NoiseSchedule
from antdiff.diffusion.weighting import (
    WEIGHTINGS,
    FixedWeighting,
    LearnedWeighting,
    LossWeighting,
    Weighting,
    build_weighting,
    sample_weighting,
)

#: a DDPM noise schedule or flow matching's path: what the rest of antdiff trains and samples on
Schedule = NoiseSchedule | FlowPath

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "VELOCITY",
    "WEIGHTINGS",
    "FixedWeighting",
    "FlowPath",
    "LearnedWeighting",
    "LossWeighting",
    "NoiseSchedule",
    "Schedule",
    "Weighting",
    "build_weighting",
    "generate",
    "make_scheduler",
    "per_sample_loss",
    "q_sample",
    "sample_weighting",
    "target",
]

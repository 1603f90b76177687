"""Reverse-diffusion samplers (`--sampler`): diffusers' DDPM, DDIM and DPM-Solver++ schedulers,
and for flow matching its flow-matching Euler and Heun schedulers, with classifier-free guidance.

Classifier-free guidance (Ho & Salimans 2022): out = out_u + g (out_c - out_u), with out_u the
prediction under the null label (index num_classes). It is linear, so it applies to epsilon
and to v predictions alike. g = 1 is the plain conditional model (one forward pass). It may be
limited to an interval of noise levels (diffusion/guidance.py, Kynkaanniemi et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from antdiff.diffusion.flow import FlowPath
from antdiff.diffusion.guidance import FULL, check_guidance_interval, in_interval
from antdiff.diffusion.loss import PREDICTIONS, check_prediction
from antdiff.diffusion.schedule import NoiseSchedule
from antdiff.errors import AntError

DDPM_SAMPLERS = ("ddpm", "ddim", "dpm++")
FLOW_SAMPLERS = ("euler", "heun")
SAMPLERS = (*DDPM_SAMPLERS, *FLOW_SAMPLERS)


def check_sampler(schedule: NoiseSchedule | FlowPath, sampler: str) -> str:
    """`sampler` if it integrates `schedule`'s kind of model; else AntError."""
    names = FLOW_SAMPLERS if schedule.continuous else DDPM_SAMPLERS
    if sampler not in names:
        kind = "flow matching" if schedule.continuous else "a DDPM model"
        choices = ", ".join(names)
        raise AntError(f"sampler {sampler!r} does not sample {kind}; choose from {choices}")
    return sampler


def default_sampler(schedule: NoiseSchedule | FlowPath) -> str:
    """DDIM for DDPM models, Euler for flow matching."""
    return "euler" if schedule.continuous else "ddim"


def make_scheduler(
    schedule: NoiseSchedule | FlowPath,
    sampler: str,
    prediction: str = "epsilon",
    clip_sample: bool = False,
) -> Any:
    """A diffusers scheduler of kind ``sampler`` built from the training schedule's config.

    ``clip_sample`` clips predicted x_0 to [-1, 1]: right for pixels, wrong for latents/points
    (DDPM only: the flow-matching schedulers have no such option).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    check_sampler(schedule, sampler)
    if isinstance(schedule, FlowPath):
        return schedule.scheduler(sampler)
    # Private keys such as _use_default_values would make diffusers ignore our overrides.
    config = {k: v for k, v in schedule.scheduler().config.items() if not k.startswith("_")}
    prediction_type = PREDICTIONS[check_prediction(prediction)]
    config.update(prediction_type=prediction_type, clip_sample=clip_sample)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2
    )


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: the labels ``generate`` uses when none are given."""
    return torch.arange(num) % num_classes


def _model_classes(model: nn.Module, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    return int(getattr(model, "num_classes", 0))


@torch.no_grad()
def _denoise_batch(
    model: nn.Module,
    scheduler: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    guidance: float,
    null: int,
    generator: torch.Generator | None,
    interval: tuple[float, float] = FULL,
) -> torch.Tensor:
    cfg = y is not None and guidance != 1.0
    flow = not hasattr(scheduler, "scale_model_input")  # flow matching: time sigma * T, a float
    total = float(scheduler.config.num_train_timesteps)
    for t in scheduler.timesteps:
        inp = x if flow else scheduler.scale_model_input(x, t)
        if flow:
            tb = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
        else:
            tb = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if cfg and in_interval(float(t) / total, interval):
            out_c, out_u = model(
                torch.cat([inp, inp]), torch.cat([tb, tb]), torch.cat([y, torch.full_like(y, null)])
            ).chunk(2)
            out = out_u + guidance * (out_c - out_u)
        else:
            out = model(inp, tb, y)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def generate(
    model: nn.Module,
    schedule: NoiseSchedule | FlowPath,
    num: int,
    shape: tuple[int, ...],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    prediction: str = "epsilon",
    clip_sample: bool = False,
    guidance_interval: tuple[float, float] = FULL,
) -> torch.Tensor:
    """Draw ``num`` samples of per-sample ``shape`` by reverse diffusion; returns [num, *shape].

    ``sampler`` defaults to `default_sampler`. Deterministic given ``generator`` (a CPU
    generator; noise is drawn batch by batch in order). ``steps`` defaults to T for ddpm and 50
    otherwise (at most T). A conditional model (``num_classes`` > 0, read from the model when
    None) gets ``labels`` or balanced labels; label ``num_classes`` means unconditional.
    ``clip_sample`` should be True only for pixel images in [-1, 1]. ``guidance_interval``
    (lo, hi): the noise levels that get guidance (see diffusion/guidance.py; default all).
    """
    if num < 1 or batch_size < 1:
        raise AntError(f"the number of samples and the batch size must be >= 1, got {num}")
    if not math.isfinite(guidance):
        raise AntError(f"the guidance scale must be a finite number, got {guidance}")
    interval = check_guidance_interval(guidance_interval)
    if steps is not None and not 1 <= steps <= schedule.timesteps:
        raise AntError(f"sampling steps must be in 1..{schedule.timesteps}, got {steps}")
    k = _model_classes(model, num_classes)
    if labels is None and k > 0:
        labels = balanced_labels(num, k)
    if labels is not None and labels.shape != (num,):
        raise AntError(f"labels must have shape ({num},), got {tuple(labels.shape)}")
    sampler = check_sampler(schedule, sampler or default_sampler(schedule))
    steps = steps or (schedule.timesteps if sampler == "ddpm" else min(50, schedule.timesteps))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, num, batch_size):
            b = min(batch_size, num - start)
            scheduler = make_scheduler(schedule, sampler, prediction, clip_sample)
            scheduler.set_timesteps(steps, device=device)
            x = torch.randn((b, *shape), generator=generator).to(device)
            x = x * getattr(scheduler, "init_noise_sigma", 1.0)
            y = None if labels is None else labels[start : start + b].to(device).long()
            out.append(
                _denoise_batch(model, scheduler, x, y, guidance, k, generator, interval).cpu()
            )
    finally:
        model.train(was_training)
    return torch.cat(out)

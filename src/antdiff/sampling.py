"""Generation with diffusers schedulers (DDPM, DDIM, DPM-Solver++), classifier-free guidance,
and writers for sample grids (PNG) and sample arrays (.npz).

Classifier-free guidance (Ho & Salimans 2022): out = out_u + g (out_c - out_u), with out_u the
prediction under the null label (index num_classes). It is linear, so it applies to epsilon
and to v predictions alike. g = 1 is the plain conditional model (one forward pass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from antdiff.diffusion import check_prediction
from antdiff.errors import AntError
from antdiff.schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim", "dpm++")
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}  # our name -> diffusers'


def make_scheduler(
    schedule: NoiseSchedule, sampler: str, prediction: str = "epsilon", clip_sample: bool = False
) -> Any:
    """A diffusers scheduler of kind ``sampler`` built from the training schedule's config.

    ``clip_sample`` clips predicted x_0 to [-1, 1]: right for pixels, wrong for latents/points.
    """
    if sampler not in SAMPLERS:
        raise AntError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    # Private keys such as _use_default_values would make diffusers ignore our overrides.
    config = {k: v for k, v in schedule.scheduler().config.items() if not k.startswith("_")}
    prediction_type = DIFFUSERS_PREDICTION[check_prediction(prediction)]
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
) -> torch.Tensor:
    cfg = y is not None and guidance != 1.0
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        tb = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if cfg:
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
    schedule: NoiseSchedule,
    num: int,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    guidance: float = 1.0,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    prediction: str = "epsilon",
    clip_sample: bool = False,
) -> torch.Tensor:
    """Draw ``num`` samples of per-sample ``shape`` by reverse diffusion; returns [num, *shape].

    Deterministic given ``generator`` (a CPU generator; noise is drawn batch by batch in order).
    ``steps`` defaults to T for ddpm and 50 otherwise. A conditional model (``num_classes`` > 0,
    read from the model when None) gets ``labels`` or balanced labels; label ``num_classes``
    means unconditional. ``clip_sample`` should be True only for pixel images in [-1, 1].
    """
    if num < 1 or batch_size < 1:
        raise AntError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
    k = _model_classes(model, num_classes)
    if labels is None and k > 0:
        labels = balanced_labels(num, k)
    if labels is not None and labels.shape != (num,):
        raise AntError(f"labels must have shape ({num},), got {tuple(labels.shape)}")
    steps = steps or (schedule.timesteps if sampler == "ddpm" else 50)
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
            x = x * scheduler.init_noise_sigma
            y = None if labels is None else labels[start : start + b].to(device).long()
            out.append(_denoise_batch(model, scheduler, x, y, guidance, k, generator).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


# ----------------------------------------------------------------------------- writers
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [N,C,H,W] -> uint8 [N,H,W,C]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [N,C,H,W] images in [-1, 1] into one uint8 [H', W', C] array (pad pixels black)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise AntError(f"a grid needs [N,1|3,H,W] images (decode latents first), got {x.shape}")
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(to_uint8(x)):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = img
    return grid


def save_grid(
    x: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None, scale: int | None = None
) -> Path:
    """Write images as a PNG grid (upscaled, nearest, so cells are >= 32 px); 2-D points as a
    scatter plot."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 2:
        return save_scatter(x, path)
    grid = image_grid(x, nrow)
    scale = scale or max(1, 32 // int(x.shape[-1]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    img.save(path, format="PNG")
    return path


def save_scatter(points: torch.Tensor, path: str | os.PathLike[str], lim: float = 3.5) -> Path:
    """Scatter plot of 2-D points (Agg backend, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_npz(
    path: str | os.PathLike[str], x: torch.Tensor, labels: torch.Tensor | None = None
) -> Path:
    """Write samples readable by ``load_dataset("npz:PATH")``: images as uint8 ``images``
    [N,H,W(,C)] plus raw float ``samples``; points as float ``x``; optional ``labels``."""
    arrays: dict[str, np.ndarray] = {}
    if x.ndim == 2:
        arrays["x"] = x.detach().float().cpu().numpy()
    else:
        arrays["samples"] = x.detach().float().cpu().numpy()
        if x.shape[1] in (1, 3):
            u8 = to_uint8(x)
            arrays["images"] = u8[..., 0] if u8.shape[-1] == 1 else u8
    if labels is not None:
        arrays["labels"] = labels.detach().cpu().numpy().astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path

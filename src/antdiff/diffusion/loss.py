"""Forward noising and the per-sample denoising loss (one value per sample, shape [B]).

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps,  a_t = alpha_bar_t        (DDPM, Ho et al. 2020)
    targets: epsilon -> eps;  v -> sqrt(a_t) eps - sqrt(1 - a_t) x_0  (Salimans & Ho 2022);
             sample -> x_0
    flow matching (flow.FlowPath): x_t = (1 - sigma) x_0 + sigma eps; velocity -> eps - x_0

Losses are returned per sample so that the caller reduces them per task (timestep interval)
with explicit task ids; weights such as Min-SNR or P2 multiply these values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from antdiff.diffusion.flow import FlowPath
from antdiff.errors import AntError

#: What a DDPM network predicts (our names) -> diffusers' `prediction_type`.
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}
VELOCITY = "velocity"  # what a flow-matching network predicts: eps - x_0
Model = Callable[..., torch.Tensor]


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS and prediction != VELOCITY:
        names = ", ".join([*PREDICTIONS, VELOCITY])
        raise AntError(f"unknown prediction {prediction!r}; choose from {names}")
    return prediction


def _coef(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> tuple:
    """sqrt(a_t), sqrt(1 - a_t) gathered at t, in like's dtype, broadcastable to like."""
    a = alphas_cumprod.to(like.device)[t.to(like.device)]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a.sqrt().to(like.dtype).view(shape), (1.0 - a).sqrt().to(like.dtype).view(shape)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
    sa, s1a = _coef(alphas_cumprod, t, x0)
    return sa * x0 + s1a * noise


def target(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction: str = "epsilon",
) -> torch.Tensor:
    """Regression target: eps, v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, or x_0."""
    prediction = check_prediction(prediction)
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x0
    sa, s1a = _coef(alphas_cumprod, t, x0)
    return sa * noise - s1a * x0


def per_sample_loss(
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    path: torch.Tensor | FlowPath,
    *,
    prediction: str = "epsilon",
    y: torch.Tensor | None = None,
    frac: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error per sample, [B]: mean over non-batch dims of (f(x_t, t, y) - target)^2.

    `path`: a DDPM schedule's alphas_cumprod, or a FlowPath (`schedule.loss_path(device)` gives
    either); `frac`: flow matching's offsets of t inside its bins (None: the bins' centres)."""
    prediction = check_prediction(prediction)
    flow = isinstance(path, FlowPath)
    if flow != (prediction == VELOCITY):
        raise AntError(
            "flow matching predicts the velocity, DDPM epsilon, v or sample; got "
            f"{prediction!r} on a {'flow' if flow else 'DDPM'} path"
        )
    if flow:
        xt, tgt = path.noisy(x0, t, noise, frac), path.target(x0, noise)
        pred = model(xt, path.model_time(t, frac), y)
    else:
        xt, tgt = q_sample(x0, t, noise, path), target(x0, t, noise, path, prediction)
        pred = model(xt, t, y)
    err = (pred.float() - tgt.float()).square()
    return err.flatten(1).mean(1)

"""Forward noising and the per-sample denoising loss (one value per sample, shape [B]).

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps,  a_t = alpha_bar_t        (DDPM, Ho et al. 2020)
    epsilon target: eps;   v target: v = sqrt(a_t) eps - sqrt(1 - a_t) x_0   (Salimans & Ho 2022)

Losses are returned per sample so that the caller reduces them per task (timestep interval)
with explicit task ids; weights such as Min-SNR or P2 multiply these values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from antdiff.errors import AntError

PREDICTIONS = ("epsilon", "v")
Model = Callable[..., torch.Tensor]


def _coef(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> tuple:
    """sqrt(a_t), sqrt(1 - a_t) gathered at t, in like's dtype, broadcastable to like."""
    a = alphas_cumprod.to(like.device)[t.to(like.device)]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a.sqrt().to(like.dtype).view(shape), (1.0 - a).sqrt().to(like.dtype).view(shape)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise AntError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")
    return prediction


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
    """Regression target: eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    if check_prediction(prediction) == "epsilon":
        return noise
    sa, s1a = _coef(alphas_cumprod, t, x0)
    return sa * noise - s1a * x0


def per_sample_loss(
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    prediction: str = "epsilon",
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error per sample, [B]: mean over non-batch dims of (f(x_t, t, y) - target)^2."""
    xt = q_sample(x0, t, noise, alphas_cumprod)
    pred = model(xt, t, y)
    err = (pred.float() - target(x0, t, noise, alphas_cumprod, prediction).float()).square()
    return err.flatten(1).mean(1)


def predict_x0(
    model_output: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction: str = "epsilon",
) -> torch.Tensor:
    """x_0 from a prediction: (x_t - sqrt(1-a) eps) / sqrt(a), or sqrt(a) x_t - sqrt(1-a) v."""
    sa, s1a = _coef(alphas_cumprod, t, xt)
    if check_prediction(prediction) == "epsilon":
        return (xt - s1a * model_output) / sa
    return sa * xt - s1a * model_output

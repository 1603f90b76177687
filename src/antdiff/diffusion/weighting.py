"""Fixed per-timestep loss weights w(SNR), for epsilon, v or sample (x0) prediction.

Each weighting is defined by its weight on the x0-space error |x0 - x0_hat|^2 (the space in
which Min-SNR states its target) and converted to the loss the model is trained with, using
(DDPM parameterisation, SNR = alpha_bar / (1 - alpha_bar)):

    |eps - eps_hat|^2 = SNR |x0 - x0_hat|^2,    |v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2,

so w_eps = w_x0 / SNR, w_v = w_x0 / (SNR + 1), w_sample = w_x0; for flow matching's velocity
(flow.FlowPath, x_0 = x_t - sigma v, sigma = 1 / (1 + sqrt(SNR))) |v - v_hat|^2 = |x0 - x0_hat|^2
/ sigma^2, so w_velocity = w_x0 sigma^2. The x0-space weights:

* constant:      1 in the trained space (w = 1 whatever the prediction).
* min-snr:       min(SNR, gamma)   (Hang et al. 2023, eq. 6): eps min(SNR, g)/SNR = min(1, g/SNR),
                 v min(SNR, g)/(SNR + 1); default gamma = 5.
* soft-min-snr:  gamma SNR / (SNR + gamma) = 1 / (1/SNR + 1/gamma) (Crowson et al. 2024, HDiT;
                 k-diffusion's `_weighting_soft_min_snr(sigma) = (sigma sd)^2 / (sigma^2 + sd^2)^2`
                 on its c_out-scaled target, i.e. 1 / (sigma^2 + sd^2) on x0 with SNR = 1/sigma^2,
                 which is this formula with gamma = 1 / sd^2; sd = 0.5 gives gamma = 4).
                 eps: gamma / (SNR + gamma); v: gamma SNR / ((SNR + gamma)(SNR + 1)); default 5.
* p2:            SNR / (k + SNR)^gamma   (Choi et al. 2022, eq. 8: lambda'_t = 1/(k + SNR)^gamma on
                 the eps loss, unnormalised as the authors trained); defaults gamma = 1, k = 1.
* debiased:      SNR / sqrt(SNR) = sqrt(SNR), i.e. 1 / sqrt(SNR) on the eps loss (Yu et al. 2023,
                 "Debiasing scores and prompts of 2D diffusion for view-consistent text-to-3D";
                 kohya sd-scripts' `apply_debiased_estimation`, SNR capped at max_snr = 1000, and
                 floored at 1e-6 here so that a zero terminal SNR stays finite).
* sigma-sqrt, cosmap (flow matching only, SD3's, Esser et al. 2024, Sec. 3.1; diffusers'
                 `compute_loss_weighting_for_sd3`): sigma^-2 and 2 / (pi (1 - 2 sigma + 2 sigma^2))
                 on the velocity loss.
* edm2:          constant, plus a learned log-variance u(sigma) per noise level (Karras et al. 2024,
                 EDM2, Eq. 14-16, 21): the loss becomes exp(-u) L + u (`LearnedWeighting`).

Every formula is written so that SNR = 0 (zero-terminal-SNR schedules, Lin et al. 2024) gives a
finite value (e.g. min(1, g/0) = 1, not 0/0). Used with any MTL method: it multiplies the
per-sample loss before the per-task reduction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from antdiff.diffusion.flow import FlowPath
from antdiff.diffusion.loss import check_prediction
from antdiff.diffusion.schedule import NoiseSchedule
from antdiff.errors import AntError

DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {},
    "min-snr": {"gamma": 5.0},
    "soft-min-snr": {"gamma": 5.0},
    "p2": {"gamma": 1.0, "k": 1.0},
    "debiased": {"max_snr": 1000.0},
    "sigma-sqrt": {},
    "cosmap": {},
    "edm2": {"lr": 0.0},  # the learning rate of u's own group; 0: the model's
}


def _sigma(snr: Tensor) -> Tensor:
    """Flow matching's sigma at this SNR = (1 - sigma)^2 / sigma^2."""
    return 1.0 / (1.0 + snr.sqrt())


def _min_snr(snr: Tensor, pred: str, gamma: float, **_: float) -> Tensor:
    if pred == "velocity":
        return torch.clamp(snr, max=gamma) * _sigma(snr) ** 2
    if pred == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)
    if pred == "v":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    return torch.clamp(snr, max=gamma)


def _soft_min_snr(snr: Tensor, pred: str, gamma: float, **_: float) -> Tensor:
    if pred == "velocity":
        return gamma * snr / (snr + gamma) * _sigma(snr) ** 2
    if pred == "epsilon":
        return gamma / (snr + gamma)
    if pred == "v":
        return gamma / ((snr + gamma) * (1.0 + 1.0 / snr))
    return gamma / (1.0 + gamma / snr)


def _p2(snr: Tensor, pred: str, gamma: float, k: float) -> Tensor:
    eps_weight = (k + snr) ** -gamma
    if pred == "velocity":
        return snr * eps_weight * _sigma(snr) ** 2
    if pred == "epsilon":
        return eps_weight
    if pred == "v":
        return eps_weight / (1.0 + 1.0 / snr)
    return snr * eps_weight


def _constant(snr: Tensor, pred: str, **_: float) -> Tensor:
    return torch.ones_like(snr)


def _debiased(snr: Tensor, pred: str, max_snr: float) -> Tensor:
    eps_weight = 1.0 / snr.clamp(1e-6, max_snr).sqrt()
    if pred == "velocity":
        return snr * eps_weight * _sigma(snr) ** 2
    if pred == "epsilon":
        return eps_weight
    if pred == "v":
        return eps_weight * snr / (snr + 1.0)
    return snr * eps_weight


def _sigma_sqrt(snr: Tensor, pred: str, **_: float) -> Tensor:
    return _sigma(snr) ** -2


def _cosmap(snr: Tensor, pred: str, **_: float) -> Tensor:
    sigma = _sigma(snr)
    return 2.0 / (math.pi * (1.0 - 2.0 * sigma + 2.0 * sigma**2))


FLOW_ONLY = ("sigma-sqrt", "cosmap")
WEIGHTINGS: dict[str, Callable[..., Tensor]] = {
    "constant": _constant,
    "min-snr": _min_snr,
    "soft-min-snr": _soft_min_snr,
    "p2": _p2,
    "debiased": _debiased,
    "sigma-sqrt": _sigma_sqrt,
    "cosmap": _cosmap,
    "edm2": _constant,
}


@dataclass(frozen=True)
class LossWeighting:
    """w(SNR) for one prediction type: call it on an SNR tensor, or `precompute` a [T] table."""

    name: str
    prediction: str
    params: dict[str, float] = field(default_factory=dict)

    def __call__(self, snr: Tensor) -> Tensor:
        if not torch.is_floating_point(snr):
            raise AntError("loss weighting expects a floating-point SNR tensor")
        if bool((snr < 0).any()) or bool(torch.isnan(snr).any()):
            raise AntError("SNR values must be >= 0 and not NaN")
        return WEIGHTINGS[self.name](snr, self.prediction, **self.params)

    def precompute(self, schedule: NoiseSchedule | FlowPath) -> Tensor:
        """The weight of every timestep 0..T-1 of `schedule` ([T], float64; flow matching: at
        each bin's centre, so the weighting is piecewise constant over 1/T of t)."""
        return self(schedule.snr.to(torch.float64))

    def __str__(self) -> str:
        args = ",".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}:{args}" if args else self.name


def build_weighting(spec: str, prediction: str = "epsilon") -> LossWeighting:
    """Parse 'min-snr', 'min-snr:5', 'min-snr:gamma=5', 'p2:gamma=0.5,k=1', 'soft-min-snr:4'."""
    name, _, args = spec.strip().partition(":")
    if name not in WEIGHTINGS:
        raise AntError(f"unknown loss weighting {name!r}; choose from {', '.join(WEIGHTINGS)}")
    check_prediction(prediction)
    if name in FLOW_ONLY and prediction != "velocity":
        raise AntError(f"the {name} weighting is flow matching's (SD3): use --objective flow")
    params = dict(DEFAULTS[name])
    for i, item in enumerate(a for a in args.split(",") if a.strip()):
        key, eq, value = item.partition("=")
        if not eq:  # a bare number is the first parameter (gamma)
            key, value = (next(iter(params), ""), key) if i == 0 else ("", key)
        key = key.strip()
        if key not in params:
            valid = ", ".join(params) or "none"
            raise AntError(f"bad parameter {item.strip()!r} for {name}; valid: {valid}")
        try:
            params[key] = float(value)
        except ValueError:
            raise AntError(f"{name} {key} must be a number, got {value.strip()!r}") from None
    if "gamma" in params and not params["gamma"] > 0:
        raise AntError(f"{name} gamma must be > 0, got {params['gamma']:g}")
    if "max_snr" in params and not params["max_snr"] > 0:
        raise AntError(f"debiased max_snr must be > 0, got {params['max_snr']:g}")
    if "lr" in params and not params["lr"] >= 0:
        raise AntError(f"edm2 lr must be >= 0 (0: the model's), got {params['lr']:g}")
    if "k" in params and not params["k"] > 0:
        raise AntError(f"p2 k must be > 0 (k = 0 is infinite at SNR = 0), got {params['k']:g}")
    return LossWeighting(name, prediction, params)


class Weighting(nn.Module):
    """A per-sample loss weighting (`--weighting`): per-sample losses [B] and their timesteps
    in, weighted losses out. It holds the fixed weight of each timestep, w[t] (a [T] table);
    `param_groups` are its own optimizer groups (none unless it learns)."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.detach().float())

    def forward(self, losses: Tensor, t: Tensor) -> Tensor:
        return losses * self.table[t]

    def param_groups(self) -> list[dict[str, Any]]:
        return []


class FixedWeighting(Weighting):
    """Per-sample losses times the fixed weight of their timestep, w[t] L (Min-SNR, P2, ...)."""


class LearnedWeighting(Weighting):
    """EDM2's uncertainty weighting over the noise level (Karras et al. 2024, Eq. 14-16, 21):
    exp(-u(sigma)) w[t] L + u(sigma), with u = a linear map of fixed Fourier features of
    c_noise = ln(sigma) / 4 (sigma = 1 / sqrt(SNR) for DDPM), as EDM2's `logvar_fourier` and
    `logvar_linear`. It is "uncertainty weighting without clusters": at the optimum
    u(sigma) = log E[w L | sigma]. The linear map starts at zero (EDM2's starts random), so
    training starts from the plain loss; it trains in its own optimizer group."""

    def __init__(
        self, table: Tensor, log_snr: Tensor, lr: float = 0.0, channels: int = 128, seed: int = 0
    ) -> None:
        super().__init__(table)
        g = torch.Generator().manual_seed(seed)
        freqs = 2 * math.pi * torch.randn(channels, generator=g, dtype=torch.float64)
        phases = 2 * math.pi * torch.rand(channels, generator=g, dtype=torch.float64)
        c_noise = -log_snr.double().clamp(-30, 30)[:, None] / 8  # ln(1/sqrt(SNR)) / 4
        self.register_buffer(
            "features", (torch.cos(c_noise * freqs + phases) * math.sqrt(2)).float()
        )
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.lr = lr

    def log_variance(self, t: Tensor) -> Tensor:
        """u at the noise level of each timestep [B]."""
        return self.linear(self.features[t]).squeeze(-1)

    def forward(self, losses: Tensor, t: Tensor) -> Tensor:
        u = self.log_variance(t)
        return torch.exp(-u) * super().forward(losses, t) + u

    def param_groups(self) -> list[dict[str, Any]]:
        lr = {"lr": self.lr} if self.lr else {}
        return [{"params": list(self.linear.parameters()), "weight_decay": 0.0, **lr}]


def sample_weighting(spec: str, prediction: str, schedule: NoiseSchedule | FlowPath) -> Weighting:
    """The per-sample weighting `--weighting` (a module: EDM2's has parameters)."""
    weighting = build_weighting(spec, prediction)
    table = weighting.precompute(schedule)
    if weighting.name == "edm2":
        return LearnedWeighting(table, schedule.log_snr, lr=weighting.params["lr"])
    return FixedWeighting(table)

"""Fixed per-timestep loss weights w(SNR), for epsilon, v or sample (x0) prediction.

Each weighting is defined by its weight on the x0-space error |x0 - x0_hat|^2 (the space in
which Min-SNR states its target) and converted to the loss the model is trained with, using
(DDPM parameterisation, SNR = alpha_bar / (1 - alpha_bar)):

    |eps - eps_hat|^2 = SNR |x0 - x0_hat|^2,    |v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2,

so w_eps = w_x0 / SNR, w_v = w_x0 / (SNR + 1), w_sample = w_x0. The x0-space weights:

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

Every formula is written so that SNR = 0 (zero-terminal-SNR schedules, Lin et al. 2024) gives a
finite value (e.g. min(1, g/0) = 1, not 0/0). Used with any MTL method: it multiplies the
per-sample loss before the per-task reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from antdiff.diffusion.loss import check_prediction
from antdiff.diffusion.schedule import NoiseSchedule
from antdiff.errors import AntError

DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {},
    "min-snr": {"gamma": 5.0},
    "soft-min-snr": {"gamma": 5.0},
    "p2": {"gamma": 1.0, "k": 1.0},
}


def _min_snr(snr: Tensor, pred: str, gamma: float, **_: float) -> Tensor:
    if pred == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)
    if pred == "v":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    return torch.clamp(snr, max=gamma)


def _soft_min_snr(snr: Tensor, pred: str, gamma: float, **_: float) -> Tensor:
    if pred == "epsilon":
        return gamma / (snr + gamma)
    if pred == "v":
        return gamma / ((snr + gamma) * (1.0 + 1.0 / snr))
    return gamma / (1.0 + gamma / snr)


def _p2(snr: Tensor, pred: str, gamma: float, k: float) -> Tensor:
    eps_weight = (k + snr) ** -gamma
    if pred == "epsilon":
        return eps_weight
    if pred == "v":
        return eps_weight / (1.0 + 1.0 / snr)
    return snr * eps_weight


def _constant(snr: Tensor, pred: str, **_: float) -> Tensor:
    return torch.ones_like(snr)


WEIGHTINGS: dict[str, Callable[..., Tensor]] = {
    "constant": _constant,
    "min-snr": _min_snr,
    "soft-min-snr": _soft_min_snr,
    "p2": _p2,
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

    def precompute(self, schedule: NoiseSchedule) -> Tensor:
        """The weight of every timestep 0..T-1 of `schedule` ([T], float64)."""
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
    if "k" in params and not params["k"] > 0:
        raise AntError(f"p2 k must be > 0 (k = 0 is infinite at SNR = 0), got {params['k']:g}")
    return LossWeighting(name, prediction, params)

"""Noise schedules, SNR and log-SNR per timestep, taken from diffusers' DDPM scheduler.

Timesteps are 0-based (t = 0 is the least noisy), as in diffusers. With
alpha_bar_t the cumulative product of (1 - beta_t):
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t),   log-SNR(t) = log SNR(t)      (DDPM, Ho et al. 2020)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from antdiff.errors import AntError

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

# Our names -> diffusers' beta_schedule names. linear is DDPM's 1e-4..0.02 (ADM, DiT);
# cosine is Nichol & Dhariwal 2021; scaled-linear is the LDM / Stable Diffusion schedule.
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled-linear": "scaled_linear"}


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving schedule over timesteps 0..T-1."""

    name: str
    alphas_cumprod: torch.Tensor  # [T] float64
    zero_terminal_snr: bool = False
    continuous: ClassVar[bool] = False  # integer timesteps (flow.FlowPath: continuous t)

    @classmethod
    def from_name(
        cls, name: str, timesteps: int = 1000, zero_terminal_snr: bool = False
    ) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise AntError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
        if timesteps < 1:
            raise AntError(f"timesteps must be >= 1, got {timesteps}")
        sched = _ddpm(name, timesteps, zero_terminal_snr)
        return cls(name, sched.alphas_cumprod.to(torch.float64), zero_terminal_snr)

    def scheduler(self) -> DDPMScheduler:
        """A diffusers DDPMScheduler with exactly this schedule (for noising and sampling)."""
        return _ddpm(self.name, self.timesteps, self.zero_terminal_snr)

    @property
    def timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def snr(self) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t); +inf only where alpha_bar_t == 1."""
        a = self.alphas_cumprod
        return a / (1.0 - a)

    @property
    def log_snr(self) -> torch.Tensor:
        """Natural log of SNR(t); -inf at a zero-terminal-SNR final step."""
        a = self.alphas_cumprod
        return torch.log(a) - torch.log1p(-a)

    def snr_numpy(self, log: bool = False) -> np.ndarray:
        return (self.log_snr if log else self.snr).numpy()

    def loss_path(self, device: torch.device | str) -> torch.Tensor:
        """What `per_sample_loss` takes: alphas_cumprod in float32 on `device`."""
        return self.alphas_cumprod.float().to(device)


def _ddpm(name: str, timesteps: int, zero_terminal_snr: bool) -> DDPMScheduler:
    from diffusers import DDPMScheduler  # imported when needed: the CLI starts faster

    ldm = name == "scaled-linear"
    return DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_schedule=SCHEDULES[name],
        beta_start=0.00085 if ldm else 0.0001,
        beta_end=0.012 if ldm else 0.02,
        rescale_betas_zero_snr=zero_terminal_snr,
    )

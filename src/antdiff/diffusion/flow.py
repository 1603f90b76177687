"""The flow-matching path (rectified flow): the noise level is a continuous t in [0, 1].

    x_t = (1 - sigma) x_0 + sigma eps,   target: the velocity v = eps - x_0,
    sigma = shift t / (1 + (shift - 1) t),   SNR = (1 - sigma)^2 / sigma^2

(Liu et al. 2023, rectified flow; Lipman et al. 2023, flow matching; Esser et al. 2024, SD3,
Sec. 2-3 and Eq. 23 for the shift, which is diffusers' `FlowMatchEulerDiscreteScheduler`'s.)
The network is conditioned on sigma * T, as diffusers' flow scripts do, and sampling integrates
dx/dsigma = v from sigma = 1 (noise) to 0 with that scheduler (Euler) or its Heun variant.

Tasks need a grid: t is split into T equal bins, bin i = [i/T, (i+1)/T) (i = 0 least noisy, as
DDPM's timesteps), so the interval tasks, the DP, the timestep samplers and the per-bin tables
(SNR at the bin's centre, fixed loss weightings) work unchanged on the bin index. A training
sample's t is continuous: its bin plus a uniform offset `frac` inside it (`batch.Batch.frac`);
evaluations without an offset take the bin's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError


@dataclass(frozen=True)
class FlowPath:
    """x_t = (1 - sigma) x_0 + sigma eps over T bins of t in [0, 1], with SD3's shift."""

    timesteps: int = 1000
    shift: float = 1.0
    name: ClassVar[str] = "flow"
    continuous: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise AntError(f"timesteps must be >= 1, got {self.timesteps}")
        if not self.shift > 0:
            raise AntError(f"the flow shift must be > 0, got {self.shift}")

    def sigma(self, t: Tensor, frac: Tensor | None = None) -> Tensor:
        """sigma of bin `t` at offset `frac` in [0, 1) (None: the bin's centre), float64."""
        offset = 0.5 if frac is None else frac.to(t.device, torch.float64)
        s = (t.to(torch.float64) + offset) / self.timesteps
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    @property
    def sigmas(self) -> Tensor:
        """sigma at the centre of every bin [T], float64."""
        return self.sigma(torch.arange(self.timesteps))

    @property
    def snr(self) -> Tensor:
        s = self.sigmas
        return ((1.0 - s) / s) ** 2

    @property
    def log_snr(self) -> Tensor:
        s = self.sigmas
        return 2.0 * (torch.log1p(-s) - torch.log(s))

    def snr_numpy(self, log: bool = False) -> np.ndarray:
        return (self.log_snr if log else self.snr).numpy()

    def loss_path(self, device: torch.device | str) -> FlowPath:
        """What `per_sample_loss` takes (a DDPM schedule gives its alphas_cumprod)."""
        return self

    def noisy(self, x0: Tensor, t: Tensor, noise: Tensor, frac: Tensor | None = None) -> Tensor:
        sigma = self.sigma(t, frac).to(x0.device, x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        return (1.0 - sigma) * x0 + sigma * noise

    @staticmethod
    def target(x0: Tensor, noise: Tensor) -> Tensor:
        return noise - x0

    def model_time(self, t: Tensor, frac: Tensor | None = None) -> Tensor:
        """The network's time input: sigma * T (diffusers' flow-matching timesteps)."""
        return (self.sigma(t, frac) * self.timesteps).float().to(t.device)

    def scheduler(self, sampler: str = "euler") -> Any:
        """diffusers' flow-matching Euler or Heun scheduler on this path."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

        kinds = {"euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler}
        if sampler not in kinds:
            raise AntError(f"flow matching samples with euler or heun, not {sampler!r}")
        return kinds[sampler](num_train_timesteps=self.timesteps, shift=self.shift)

"""Uncertainty weighting (Kendall et al. 2018) exactly as ANT's code (Go et al. 2023,
Sec. 5; official `mtl_library/uw.py`).

    objective = sum_c 0.5 * (exp(-s_c) * L_c / K + s_c),   s_c = log sigma_c^2, initialised to 0.

The extra 1/K is the paper code's (it divides each cluster loss by K before UW). The stationary
point is s_c = log(L_c / K), where the weight on L_c is 0.5 exp(-s_c) / K = 0.5 / L_c: loss
normalisation. s is trained by the caller's optimizer in its own group (ANT: lr 0.025, no weight
decay), see `param_groups`. Absent tasks contribute nothing (their s_c gets zero gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.mtl.base import LossMethod
from antdiff.options import Param


class UncertaintyWeighting(LossMethod):
    """ANT-UW: learnable log-variances, one per task."""

    weights_from_losses = False
    options = (Param("lr", float, 0.025, 0, 1, open_low=True, help="lr of the log-variances"),)

    def __init__(self, num_tasks: int, lr: float = 0.025) -> None:
        super().__init__(num_tasks)
        if not lr > 0:
            raise AntError(f"uw lr must be > 0, got {lr!r}")
        self.lr = float(lr)
        self.log_vars = nn.Parameter(torch.zeros(self.num_tasks))

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        self.check_losses(losses)
        present = self.present_mask(present, losses.device)
        s = self.log_vars.to(losses.dtype)
        terms = 0.5 * (torch.exp(-s) * losses / self.num_tasks + s)
        return terms[present].sum()

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.log_vars], "lr": self.lr, "weight_decay": 0.0}]

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, lr={self.lr}"

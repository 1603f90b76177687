"""Vanilla: the plain mean of the task losses (the usual objective when the tasks are equal)."""

from __future__ import annotations

from torch import Tensor

from antdiff.mtl.base import LossMethod


class Mean(LossMethod):
    """sum_k L_k / n over the n present tasks; weights 1/n."""

    weights_from_losses = False
    equal_task_weights = True

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        self.check_losses(losses)
        present = self.present_mask(present, losses.device)
        return losses[present].mean()

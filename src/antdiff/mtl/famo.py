"""FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023), O(1) cost per step.

Task weights z = softmax(xi). The objective is

    sum_i z_i log(L_i + eps) / c,      c = sum_i z_i / (L_i + eps)   (c held constant),

whose gradient is sum_i w_i grad L_i with w_i = z_i / (c (L_i + eps)), weights summing to 1
(FAMO's eq. for the update direction, with minimum losses l*_i = 0 as for diffusion MSE).
The logits follow the log-loss decrease delta_i = log L_i(prev) - log L_i(now): their gradient
is J_softmax(xi)^T delta, taken by Adam with L2 weight decay gamma (FAMO's lr 0.025, gamma 0.01).

Two ways to read delta. `same_batch=True` is FAMO's own algorithm: the losses of the batch just
trained on are evaluated again after the optimizer step (`observe`, called by the trainer
through `ant_after_step`: one extra forward without gradient per step), so delta is the decrease
the step caused on that batch. The default (`same_batch=False`) costs exactly one forward and one
backward per step: "prev" is the previous step's losses and "now" the current step's, on another
batch, so delta carries the batch-to-batch variance of the losses on top of the decrease. On
diffusion timestep intervals both variants fail in the project's benchmark: losses span ~400x, and
log-loss balancing weights a task by 1 / L_i. All state (logits, Adam moments, previous
losses) is in buffers, so `state_dict` resumes exactly, and under DDP every rank sees the same
global losses and takes the same logit step. Absent tasks get weight 0 and delta 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.mtl.base import LossMethod


class FAMO(LossMethod):
    """Loss-based, constant-cost balancing of the task losses' rates of decrease."""

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        gamma: float = 0.01,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        same_batch: bool = False,
    ) -> None:
        super().__init__(num_tasks)
        self.observes_after_step = bool(same_batch)
        if not lr > 0 or gamma < 0 or not eps > 0:
            raise AntError(f"famo needs lr > 0, gamma >= 0, eps > 0; got {lr}, {gamma}, {eps}")
        self.lr, self.gamma, self.eps = float(lr), float(gamma), float(eps)
        self.betas = (float(betas[0]), float(betas[1]))
        k = self.num_tasks
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_log_losses", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("prev_present", torch.zeros(k, dtype=torch.bool))

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """FAMO objective at `losses`; first updates the logits from the previous losses."""
        self.check_losses(losses)
        present = self.present_mask(present, losses.device)
        log_now = torch.log(losses.detach().to(self.logits) + self.eps)
        mask = present.to(self.logits.device)
        if not self.observes_after_step:
            self._update_logits(log_now, mask)
        self.prev_log_losses.copy_(torch.where(mask, log_now, self.prev_log_losses))
        self.prev_present.copy_(mask)

        z = torch.softmax(self.logits[mask], dim=0).to(device=losses.device, dtype=losses.dtype)
        d = losses[present] + self.eps
        c = (z / d).sum().detach()
        return (z * torch.log(d)).sum() / c

    def observe(self, losses: Tensor, present: Tensor) -> None:
        """same_batch: update the logits from this batch's loss decrease across the step."""
        mask = present.to(self.logits.device) & self.prev_present
        log_after = torch.log(losses.detach().to(self.logits) + self.eps)
        if bool(torch.isfinite(log_after[mask]).all()):
            self._update_logits(log_after, mask)
        self.prev_present.zero_()  # consumed: the next step's forward sets it again

    def _update_logits(self, log_now: Tensor, present: Tensor) -> None:
        both = present & self.prev_present
        if not bool(both.any()):
            return
        delta = torch.where(both, self.prev_log_losses - log_now, torch.zeros_like(log_now))
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        b1, b2 = self.betas
        self.adam_steps += 1
        t = int(self.adam_steps)
        self.exp_avg.mul_(b1).add_((1 - b1) * grad)
        self.exp_avg_sq.mul_(b2).add_((1 - b2) * grad * grad)
        m_hat = self.exp_avg / (1 - b1**t)
        v_hat = self.exp_avg_sq / (1 - b2**t)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))

    def extra_repr(self) -> str:
        extra = ", same_batch=True" if self.observes_after_step else ""
        return f"num_tasks={self.num_tasks}, lr={self.lr}, gamma={self.gamma}{extra}"

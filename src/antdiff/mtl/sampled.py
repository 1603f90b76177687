"""`sampled:METHOD`: the model trains on the plain sample mean; METHOD only learns task weights.

With a timestep sampler whose interval probabilities follow the method's weights (ANT as a
sampler; Kingma & Gao, NeurIPS 2023: a weighting is a density), weighting the losses as well
would apply the emphasis twice. This wrapper gives the model the objective

    sum_k shares_k L_k + inner(L.detach()),

where shares [K] come from the sampler for the batch it drew (`set_shares`, every step before
the backward: n_k / B for the plain mean over the B samples, or that times an importance
ratio), so the model's update is sum_k shares_k grad L_k while the inner method's own
parameters (uncertainty weighting's log-variances, Kendall et al. 2018) get exactly the
gradient they would get unwrapped. The inner method's weights d inner / d L_k, which the
sampler should follow, are `sampling_weights()`; the engine's `task_weights` are the shares.

Loss-based inner methods only (mean, uw, famo): a Gramian method's weights need the per-task
gradients, which the plain mean never computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.mtl.base import LossMethod


class SampledMethod(LossMethod):
    """Plain-mean model objective from sampler shares; the inner method learns its weights."""

    def __init__(self, num_tasks: int, inner: LossMethod) -> None:
        super().__init__(num_tasks)
        if not isinstance(inner, LossMethod) or isinstance(inner, SampledMethod):
            raise AntError(
                f"sampled: needs a loss-based method (mean, uw, famo), got {type(inner).__name__}"
            )
        if inner.num_tasks != self.num_tasks:
            raise AntError(f"sampled: inner method has {inner.num_tasks} tasks, not {num_tasks}")
        self.inner = inner
        self.weights_from_losses = inner.weights_from_losses
        self.observes_after_step = inner.observes_after_step
        self.default_max_grad_norm = inner.default_max_grad_norm
        self.shares: Tensor | None = None
        self.last_inner = torch.zeros(self.num_tasks)

    def set_shares(self, shares: Tensor) -> None:
        """The model objective's coefficients [K] on the per-task mean losses of this step's
        global batch (the same on every rank); consumed by the step (`advance`)."""
        s = torch.as_tensor(shares).detach().double().cpu()
        if s.shape != (self.num_tasks,) or not bool(torch.isfinite(s).all() & (s >= 0).all()):
            raise AntError(f"sampled: shares must be {self.num_tasks} finite numbers >= 0")
        self.shares = s

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        self.check_losses(losses)
        if self.shares is None:
            raise AntError("sampled: call set_shares(sampler.shares(task_ids)) before each step")
        present = self.present_mask(present, losses.device)
        leaf = losses.detach().clone().requires_grad_()
        with torch.enable_grad():
            inner = self.inner(leaf, present)
            (grad,) = torch.autograd.grad(inner, leaf, retain_graph=True)
        self.last_inner = torch.where(present, grad, torch.zeros_like(grad)).detach().cpu()
        shares = self.shares.to(losses)
        return (shares * losses)[present].sum() + inner

    def sampling_weights(self) -> Tensor:
        """The inner method's weights d inner / d L_k [K] at the last step's losses."""
        return self.last_inner.clone()

    def observe(self, losses: Tensor, present: Tensor) -> None:
        self.inner.observe(losses, present)

    def advance(self) -> None:
        super().advance()
        self.inner.advance()
        self.shares = None

    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"

"""`sampled:METHOD`: the model trains on the plain sample mean; METHOD only learns task weights.

With a timestep sampler whose interval probabilities follow the method's weights (ANT as a
sampler; Kingma & Gao, NeurIPS 2023: a weighting is a density), weighting the losses as well
would apply the emphasis twice. This wrapper gives the model the update

    sum_k shares_k grad L_k,

where shares [K] come from the sampler for the batch it drew (`set_shares`, every step before
the backward: n_k / B for the plain mean over the B samples, or that times an importance
ratio), while the inner method learns exactly as unwrapped: a loss-based one (mean, uw, famo)
from the objective sum_k shares_k L_k + inner(L.detach()), so its own parameters (uncertainty
weighting's log-variances, Kendall et al. 2018) get their usual gradient; a Gramian one
(pcgrad, nash) refreshes its weights from the task Gramian on its own schedule. The inner
method's weights, which the sampler should follow, are `sampling_weights(...)`; the engine's
`task_weights` are the shares. The model's update is the plain mean, so no gradient clip is
inherited from the inner method (Nash-MTL's default of 1.0 is for its own combination).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod


class _Shares:
    """The per-step shares [K] that the loop sets and the step consumes."""

    num_tasks: int
    shares: Tensor | None = None
    takes_shares = True
    needs_follow = True  # the shares alone are the model's objective: pair with `follow`

    def set_shares(self, shares: Tensor) -> None:
        """The model update's coefficients [K] on the per-task mean losses of this step's
        global batch (the same on every rank); consumed by the step (`advance`)."""
        s = torch.as_tensor(shares).detach().double().cpu()
        if s.shape != (self.num_tasks,) or not bool(torch.isfinite(s).all() & (s >= 0).all()):
            raise AntError(f"sampled: shares must be {self.num_tasks} finite numbers >= 0")
        self.shares = s

    def current_shares(self) -> Tensor:
        if self.shares is None:
            raise AntError("sampled: call set_shares(sampler.shares(task_ids)) before each step")
        return self.shares


def _check_inner(inner: MTLMethod, num_tasks: int, kind: type) -> None:
    if not isinstance(inner, kind) or inner.takes_shares:
        raise AntError(f"sampled: cannot wrap {type(inner).__name__}")
    if inner.num_tasks != num_tasks:
        raise AntError(f"sampled: inner method has {inner.num_tasks} tasks, not {num_tasks}")


class SampledMethod(_Shares, LossMethod):
    """A loss-based inner method: plain-mean model objective, the inner loss on detached L."""

    def __init__(self, num_tasks: int, inner: LossMethod) -> None:
        super().__init__(num_tasks)
        _check_inner(inner, num_tasks, LossMethod)
        self.inner = inner
        self.weights_from_losses = inner.weights_from_losses
        self.observes_after_step = inner.observes_after_step
        self.last_inner = torch.zeros(self.num_tasks)

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        self.check_losses(losses)
        shares = self.current_shares().to(losses)
        present = self.present_mask(present, losses.device)
        leaf = losses.detach().clone().requires_grad_()
        with torch.enable_grad():
            inner = self.inner(leaf, present)
            (grad,) = torch.autograd.grad(inner, leaf, retain_graph=True)
        self.last_inner = torch.where(present, grad, torch.zeros_like(grad)).detach().cpu()
        return (self.corrected(shares, grad.detach(), present) * losses)[present].sum() + inner

    def corrected(self, shares: Tensor, weights: Tensor, present: Tensor) -> Tensor:
        """The model's coefficients on the task losses: the shares themselves."""
        return shares

    def sampling_weights(self, step_weights: Tensor | None = None) -> Tensor:
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


class SampledGramian(_Shares, GramianMethod):
    """A Gramian inner method: it refreshes its weights on schedule; the model gets the shares."""

    def __init__(self, num_tasks: int, inner: GramianMethod) -> None:
        super().__init__(num_tasks, inner.update_every)
        _check_inner(inner, num_tasks, GramianMethod)
        self.inner = inner

    def needs_refresh(self) -> bool:
        return self.inner.needs_refresh()

    def refresh(self, gramian: Tensor, present: Tensor | None = None) -> Tensor:
        self.inner.refresh(gramian, present)
        return self.cached_weights()

    def cached_weights(self) -> Tensor:
        return self.current_shares().clone()

    def sampling_weights(self, step_weights: Tensor | None = None) -> Tensor:
        """The inner method's last refreshed weights [K] (zeros before its first refresh)."""
        if not bool(self.inner.has_cached):
            return torch.zeros(self.num_tasks, dtype=torch.float64)
        return self.inner.cached_weights()

    def advance(self) -> None:
        super().advance()
        self.inner.advance()
        self.shares = None

    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups()


class AnchoredMethod(SampledMethod):
    """`anchored:METHOD`: the timestep density is the practitioner's (logit-normal, loss-aware,
    ...), and METHOD's weights only correct it within [1/BOUND, BOUND]: the model's objective is
    sum_k shares_k c_k L_k with c_k = clip(w_k / mean_j w_j, 1/BOUND, BOUND) (w: the inner
    method's weights at this step's losses, mean over the tasks in the batch). At worst it is the
    anchor's own objective distorted by at most BOUND per interval (Kingma & Gao 2023: a weight
    and a density are interchangeable in expectation, so a bounded weight keeps the density's
    variance)."""

    BOUND = 2.0
    needs_follow = False

    def corrected(self, shares: Tensor, weights: Tensor, present: Tensor) -> Tensor:
        ratio = weights / weights[present].mean().clamp_min(torch.finfo(weights.dtype).tiny)
        return shares * ratio.clamp(1 / self.BOUND, self.BOUND)


def anchored(inner: MTLMethod) -> AnchoredMethod:
    """The `anchored:` wrapper (loss-based inner methods: their weights come with the losses)."""
    if not isinstance(inner, LossMethod):
        raise AntError(f"anchored: wraps loss-based methods (uw, famo), not {type(inner).__name__}")
    return AnchoredMethod(inner.num_tasks, inner)


def sampled(inner: MTLMethod) -> SampledMethod | SampledGramian:
    """The `sampled:` wrapper that fits `inner`'s kind."""
    if isinstance(inner, LossMethod):
        return SampledMethod(inner.num_tasks, inner)
    if isinstance(inner, GramianMethod):
        return SampledGramian(inner.num_tasks, inner)
    raise AntError(f"sampled: cannot wrap {type(inner).__name__}")

"""What every multi-task backward shares, public inside `antdiff.mtl`: the checked inputs, the
per-sample losses of a sub-batch, the gradient side of one optimizer step under AMP (`GradStep`)
and its report (`StepInfo`). The engine (`ant_backward`, engine.py) and gradient accumulation
(`Accumulation`, accumulate.py) are both written with these and with `TaskGradients`
(rows.py), so that each step of the update is written once.

AMP: losses are scaled by the GradScaler's scale for backward and the gradients unscaled before
they are combined (Nash's weights depend on the gradient scale); an inf/NaN skips the step and
backs off the scale exactly as `GradScaler.step/update`. `keep_scaled` instead hands the scaled
gradients to an optimizer that unscales, skips and updates the scale itself (accelerate's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from antdiff.errors import AntError, NonFiniteError
from antdiff.mtl.base import GramianMethod, MTLMethod
from antdiff.mtl.parallel import all_finite, is_fsdp, world_of

LossFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What one `ant_backward` (or `Accumulation.step`) did (all tensors detached, on CPU)."""

    task_losses: Tensor  # [K] global task losses; NaN for tasks absent from the global batch
    task_weights: Tensor  # [K] effective weight on each task loss: the update is sum_k w_k grad L_k
    finite: bool  # False: skip optimizer.step() (AMP overflow; the scaler has backed off)
    refreshed: bool  # a gradient method recomputed its weights this step
    #: [K, K] Gramian of this step's task gradients (float64), when the step computed them (a
    #: gradient method's refresh, or `ant_backward(gramian=True)`); None otherwise
    gramian: Tensor | None = None


def task_sums(per_sample: Tensor, task_ids: Tensor, num_tasks: int) -> Tensor:
    """sum of the per-sample losses of each task [K] (by explicit task id, never by position)."""
    out = torch.zeros(num_tasks, dtype=per_sample.dtype, device=per_sample.device)
    return out.index_add(0, task_ids, per_sample)


def per_sample_losses(loss_fn: LossFn, index: Tensor) -> Tensor:
    """`loss_fn(index)` as float32, refused unless it is one loss per sample of `index`."""
    out = loss_fn(index)
    if not isinstance(out, Tensor) or out.shape != (index.numel(),):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AntError(
            f"loss_fn must return per-sample losses of shape ({index.numel()},), got {shape}"
        )
    return out.float()


def check_inputs(
    method: MTLMethod,
    task_ids: Tensor,
    task_counts: Tensor | None,
    model: nn.Module,
    partial: bool = False,
) -> tuple[Tensor, Tensor]:
    """(task ids, counts of the global batch); `partial`: the ids are one micro-batch of it."""
    k = method.num_tasks
    if not isinstance(task_ids, Tensor) or task_ids.dim() != 1 or task_ids.is_floating_point():
        raise AntError("task_ids must be a 1-D integer tensor [B] (one task id per sample)")
    if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= k):
        raise AntError(f"task ids must lie in 0..{k - 1} (the method has {k} tasks)")
    local_counts = torch.bincount(task_ids.long().cpu(), minlength=k)
    if isinstance(method, GramianMethod) and is_fsdp(model):
        raise AntError(
            f"{type(method).__name__} needs whole task gradients, which FSDP2 shards: "
            "use a loss-based method (mean, uw, famo) under FSDP"
        )
    if task_counts is None:
        if world_of(model)[0] > 1:
            raise AntError(
                "under DDP or FSDP pass task_counts: the per-task counts of the GLOBAL batch"
            )
        counts = local_counts
    else:
        counts = torch.as_tensor(task_counts).long().cpu()
        if counts.shape != (k,):
            raise AntError(
                f"task_counts has shape {tuple(counts.shape)} but the method has {k} tasks"
            )
        if bool((local_counts > counts).any()):
            raise AntError(
                f"task_counts {counts.tolist()} are below the local counts {local_counts.tolist()}"
            )
        if world_of(model)[0] == 1 and not partial and not torch.equal(local_counts, counts):
            raise AntError(
                f"task_counts {counts.tolist()} differ from the batch's {local_counts.tolist()}"
            )
    if int(counts.sum()) == 0:
        raise AntError("the batch has no samples")
    return task_ids.long(), counts


class GradStep:
    """The gradient side of one optimizer step: the model's trainable parameters with their
    `.grad` (and the method's) cleared, the AMP scale the backward passes multiply their losses
    by, and the end of the step (`finish`)."""

    def __init__(
        self,
        method: MTLMethod,
        model: nn.Module,
        scaler: torch.amp.GradScaler | None = None,
        keep_scaled: bool = False,
    ) -> None:
        self.method, self.model = method, model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise AntError("the model has no parameter that requires grad")
        for p in self.params:
            p.grad = None
        method.zero_grad(set_to_none=True)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.device = self.params[0].device
        self.scale = 1.0  # the scaler's current scale (1 without one)
        if self.scaler is not None:
            self.scaler.scale(torch.zeros((), device=self.device))  # the scaler's lazy init
            self.scale = self.scaler.get_scale()
        self.keep_scaled = keep_scaled and self.scaler is not None

    def unscale_grads(self) -> bool:
        """Divide the parameters' accumulated `.grad` by the scale; whether all are finite (on
        every process)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        return all_finite(grads, self.model)

    def finish(
        self,
        losses: Tensor,
        weights: Tensor,
        finite: bool,
        present: Tensor,
        refreshed: bool,
        gramian: Tensor | None = None,
    ) -> StepInfo:
        """Hand the step to the scaler (or to the caller's, `keep_scaled`), or refuse a
        non-finite one without any; advance the method; describe the step."""
        method = self.method
        if self.keep_scaled:
            self._rescale(finite)
        losses = torch.where(present, losses.cpu(), torch.full_like(losses.cpu(), float("nan")))
        if self.scaler is not None and not self.keep_scaled:
            _report_to_scaler(self.scaler, found_inf=not finite, device=self.device)
        elif not finite and not self.keep_scaled:
            bad = [k for k in range(method.num_tasks) if present[k] and not losses[k].isfinite()]
            raise NonFiniteError(
                f"non-finite task losses or gradients (task losses {losses.tolist()}, bad tasks "
                f"{bad}); lower the learning rate or use a GradScaler to skip such steps"
            )
        if finite:
            method.advance()
        weights = torch.where(present, weights.detach().float().cpu(), 0.0)  # cached: absent->0
        return StepInfo(losses, weights, finite, refreshed=refreshed, gramian=gramian)

    def _rescale(self, finite: bool) -> None:
        """For an optimizer that unscales itself: the (unscaled) gradients multiplied back by the
        scale, the method's own too; a skipped step as an inf in `.grad`, which that optimizer's
        scaler finds, skips and backs off on."""
        if not finite:
            self.params[0].grad = torch.full_like(self.params[0], float("inf"))
            return
        owned = (*self.params, *self.method.parameters())
        grads = [p.grad for p in owned if p.grad is not None]
        if grads and self.scale != 1.0:
            torch._foreach_mul_(grads, self.scale)


def _report_to_scaler(scaler: torch.amp.GradScaler, found_inf: bool, device: torch.device) -> None:
    """Record this step's overflow in the GradScaler (public API only) and update its scale."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.full((1,), float("inf") if found_inf else 0.0, device=device)
    scaler.unscale_(torch.optim.SGD([probe], lr=0.0))
    scaler.update()

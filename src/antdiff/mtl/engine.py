"""The one place where task losses and task gradients meet the model: `ant_backward`.

Two paths, the same update sum_k w_k grad L_k (L_k = mean per-sample loss of task k over the
GLOBAL batch):

* weighted step (loss-based methods; gradient methods between refreshes): one forward over the
  local batch, local task sums / global counts, the global task losses by one all-reduce of K
  numbers, weights from the method, then ONE backward of world * sum_k w_k L_k^local
  (DDP averages over ranks, which gives exactly sum_k w_k grad L_k).
* per-task step (a gradient method's refresh, or any method when the caller asks for the
  Gramian, `gramian=True`): one forward/backward per task sub-batch into the rows of
  `TaskGradients` (rows.py), one all-reduce of them, the Gramian, weights (the refresh's, the
  cached ones, or a loss-based method's from the global task losses), the combined gradient
  written to `.grad`. The Gramian is returned in `StepInfo.gramian`.

AMP (step.py): with a GradScaler an inf/NaN skips the step (finite=False) and backs off the
scale exactly as `GradScaler.step/update`; do not call `scaler.step`. Without a scaler,
non-finite task losses or gradients raise `NonFiniteError` instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.parallel import world_of
from antdiff.mtl.rows import TaskGradients
from antdiff.mtl.step import (
    GradStep,
    LossFn,
    StepInfo,
    check_inputs,
    per_sample_losses,
    task_sums,
)


def ant_backward(
    method: MTLMethod,
    loss_fn: LossFn,
    task_ids: Tensor,
    task_counts: Tensor | None,
    model: nn.Module,
    scaler: torch.amp.GradScaler | None = None,
    keep_scaled: bool = False,
    gramian: bool = False,
) -> StepInfo:
    """Write the method's combined, unscaled, all-reduced gradient into the parameters' `.grad`.

    `gramian`: take the per-task path this step whatever the method, so that `StepInfo.gramian`
    holds the task Gramian (a timestep sampler that learns from it; it costs one forward/backward
    per task sub-batch instead of one pass). A gradient method's refresh gives it anyway.

    `keep_scaled` (with a scaler): leave `.grad` (the method's own parameters' too) multiplied by
    the scaler's scale and the scaler untouched, for an optimizer that unscales, skips overflowing
    steps and updates the scale itself (accelerate's with fp16: antdiff.integrations.accelerate).

    loss_fn(index) runs `model` (the DDP wrapper itself under DDP, so that gradient sync can be
    switched off and on) on the LOCAL samples `index` and returns their per-sample losses
    [len(index)]; it is called once per step, or once per task on a gradient method's refresh.
    task_ids [B_local] holds each local sample's task; task_counts [K] the number of samples
    of each task in the GLOBAL batch (the same on every rank; None means the local counts,
    single process only). Existing `.grad` are overwritten, also those of the method's own
    parameters. Then: clip, and `optimizer.step()` if `finite`.
    """
    if not isinstance(method, LossMethod | GramianMethod):
        raise AntError(f"{type(method).__name__} is not a LossMethod or a GramianMethod")
    ids, counts = check_inputs(method, task_ids, task_counts, model)
    present = counts > 0
    grad = GradStep(method, model, scaler, keep_scaled)
    refresh = isinstance(method, GramianMethod) and method.needs_refresh()
    g = None
    if refresh or gramian:
        losses, weights, finite, g = _per_task_step(grad, loss_fn, ids, counts, present, refresh)
    else:
        losses, weights, finite = _weighted_step(grad, loss_fn, ids, counts, present)
    return grad.finish(losses, weights, finite, present, refreshed=refresh, gramian=g)


def ant_after_step(
    method: MTLMethod,
    loss_fn: LossFn,
    task_ids: Tensor,
    task_counts: Tensor | None,
    model: nn.Module,
) -> None:
    """After `optimizer.step()`: hand the same batch's global task losses to `method.observe`.

    A no-op (no forward) unless the method sets `observes_after_step` (FAMO with same_batch:
    its logit update reads the loss decrease of ONE batch across the step). Same arguments as
    `ant_backward`; one forward without gradient and, under DDP, one all-reduce of K numbers.
    """
    if not method.observes_after_step:
        return
    ids, counts = check_inputs(method, task_ids, task_counts, model)
    with torch.no_grad():
        _, glob = _task_losses(loss_fn, ids, counts, method.num_tasks, model)
    method.observe(glob, (counts > 0).to(glob.device))


def _weighted_step(
    grad: GradStep, loss_fn: LossFn, ids: Tensor, counts: Tensor, present: Tensor
) -> tuple[Tensor, Tensor, bool]:
    method, model = grad.method, grad.model
    k = method.num_tasks
    local, glob = _task_losses(loss_fn, ids, counts, k, model)
    present = present.to(glob.device)
    if not bool(torch.isfinite(glob[present]).all()):
        return glob, torch.zeros(k), False
    if isinstance(method, LossMethod):
        weights = method.task_weights(glob, present)
    else:
        assert isinstance(method, GramianMethod)
        weights = method.cached_weights()
    objective = (weights.detach().to(local) * local).sum() * (world_of(model)[0] * grad.scale)
    objective.backward()
    return glob, weights, grad.unscale_grads()


def _task_losses(
    loss_fn: LossFn, ids: Tensor, counts: Tensor, k: int, model: nn.Module
) -> tuple[Tensor, Tensor]:
    """One forward: this rank's task sums / GLOBAL counts [K] (differentiable) and their sum
    over ranks, the global task losses (detached; one all-reduce of K numbers under DDP)."""
    per_sample = per_sample_losses(loss_fn, torch.arange(ids.numel(), device=ids.device))
    local = task_sums(per_sample, ids, k) / counts.clamp_min(1).to(per_sample)
    glob = local.detach().clone()
    world, group = world_of(model)
    if world > 1:
        dist.all_reduce(glob, group=group)
    return local, glob


def _per_task_step(
    grad: GradStep, loss_fn: LossFn, ids: Tensor, counts: Tensor, present: Tensor, refresh: bool
) -> tuple[Tensor, Tensor, bool, Tensor | None]:
    """(global task losses, weights, finite, Gramian [K, K] float64 on CPU or None if not
    finite); `refresh`: a gradient method solves for new weights from the Gramian."""
    method, model = grad.method, grad.model
    k = method.num_tasks
    rows = TaskGradients.reused(method, grad.params)
    local = torch.zeros(k, dtype=torch.float32, device=grad.device)
    for task in range(k):
        index = (ids == task).nonzero().squeeze(1)
        if index.numel() == 0:  # no local sample: zero row (other ranks may have some)
            rows.rows[task].zero_()
            continue
        local[task] = rows.backward(task, loss_fn, index, counts[task], model, grad.scale)
    rows.reduce(model, grad.scale)
    world, group = world_of(model)
    if world > 1:
        dist.all_reduce(local, group=group)
    gramian = rows.gramian()
    present_d = present.to(local.device)
    if not bool(torch.isfinite(local[present_d]).all()) or not bool(gramian.isfinite().all()):
        return local, torch.zeros(k), False, None
    if isinstance(method, LossMethod):
        weights = method.task_weights(local, present_d)
    elif refresh:
        weights = method.refresh(gramian, present.cpu())
    else:
        weights = method.cached_weights()
    finite = rows.write_combined(weights)
    return local, weights, finite, gramian.detach().double().cpu() if finite else None


F = TypeVar("F", bound=Callable[..., Any])


def _deprecated(new: F, old: str) -> F:
    """`new` under its former name `old`: a DeprecationWarning once per calling line."""
    warned: set[tuple[str, int]] = set()

    @wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        if site not in warned:
            warned.add(site)
            message = f"{old} is deprecated: call {new.__name__} (the same arguments)"
            warnings.warn(message, DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated name of `{new.__name__}`."
    return alias  # type: ignore[return-value]


# The former names (they read like torchjd's own `torchjd.autojac.mtl_backward`).
mtl_backward = _deprecated(ant_backward, "mtl_backward")
mtl_after_step = _deprecated(ant_after_step, "mtl_after_step")

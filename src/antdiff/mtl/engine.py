"""The one place where task losses and task gradients meet the model: `mtl_backward`.

Two paths, the same update sum_k w_k grad L_k (L_k = mean per-sample loss of task k over the
GLOBAL batch):

* weighted step (loss-based methods; gradient methods between refreshes): one forward over the
  local batch, local task sums / global counts, the global task losses by one all-reduce of K
  numbers, weights from the method, then ONE backward of world * sum_k w_k L_k^local
  (DDP averages over ranks, which gives exactly sum_k w_k grad L_k).
* refresh step (gradient methods): one forward/backward per task sub-batch (exact: a task loss
  depends only on its own samples) under `model.no_sync()`, each flattened into a row of a
  [K, P] buffer reused across steps; one all-reduce (SUM) of the buffer; the Gramian; weights;
  the combined gradient written to `.grad`.

AMP: losses are scaled by the GradScaler for backward and the gradients unscaled before they are
combined (Nash's weights depend on the gradient scale); an inf/NaN skips the step (finite=False)
and backs off the scale exactly as `GradScaler.step/update`; do not call `scaler.step`.
Without a scaler, non-finite task losses or gradients raise `NonFiniteError` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from antdiff.errors import AntError, NonFiniteError
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.parallel import all_finite, is_fsdp, no_sync, world_of

LossFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What one `mtl_backward` did (all tensors detached, on CPU)."""

    task_losses: Tensor  # [K] global task losses; NaN for tasks absent from the global batch
    task_weights: Tensor  # [K] effective weight on each task loss: the update is sum_k w_k grad L_k
    finite: bool  # False: skip optimizer.step() (AMP overflow; the scaler has backed off)
    refreshed: bool  # a gradient method recomputed its weights this step


def mtl_backward(
    method: MTLMethod,
    loss_fn: LossFn,
    task_ids: Tensor,
    task_counts: Tensor | None,
    model: nn.Module,
    scaler: torch.amp.GradScaler | None = None,
    keep_scaled: bool = False,
) -> StepInfo:
    """Write the method's combined, unscaled, all-reduced gradient into the parameters' `.grad`.

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
    ids, counts = _check_inputs(method, task_ids, task_counts, model)
    present = counts > 0
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AntError("the model has no parameter that requires grad")
    for p in params:
        p.grad = None
    method.zero_grad(set_to_none=True)
    if scaler is not None and not scaler.is_enabled():
        scaler = None
    scale = _scale(scaler, params[0].device)
    keep_scaled = keep_scaled and scaler is not None
    if isinstance(method, GramianMethod) and method.needs_refresh():
        step = _refresh_step
    elif isinstance(method, LossMethod | GramianMethod):
        step = _weighted_step
    else:
        raise AntError(f"{type(method).__name__} is not a LossMethod or a GramianMethod")
    losses, weights, finite = step(method, loss_fn, ids, counts, present, params, model, scale)
    if keep_scaled:
        _keep_scaled(params, method, scale, finite)
    return _finish(
        method,
        losses,
        weights,
        finite,
        present,
        None if keep_scaled else scaler,
        params[0].device,
        refreshed=step is _refresh_step,
        skip_ok=keep_scaled,
    )


def _scale(scaler: torch.amp.GradScaler | None, device: torch.device) -> float:
    """The scaler's current scale (1 without one)."""
    if scaler is None:
        return 1.0
    scaler.scale(torch.zeros((), device=device))  # the scaler's lazy init
    return scaler.get_scale()


def _keep_scaled(params: list[nn.Parameter], method: MTLMethod, scale: float, finite: bool) -> None:
    """Hand the step to an optimizer that unscales itself: the (unscaled) gradients multiplied
    back by `scale`, the method's own too; a skipped step as an inf in `.grad`, which that
    optimizer's scaler finds, skips and backs off on."""
    if not finite:
        params[0].grad = torch.full_like(params[0], float("inf"))
        return
    grads = [p.grad for p in (*params, *method.parameters()) if p.grad is not None]
    if grads and scale != 1.0:
        torch._foreach_mul_(grads, scale)


def _finish(
    method: MTLMethod,
    losses: Tensor,
    weights: Tensor,
    finite: bool,
    present: Tensor,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    refreshed: bool,
    skip_ok: bool = False,
) -> StepInfo:
    """Report the step to the scaler (or refuse a non-finite one without it, unless the caller's
    optimizer skips it: `skip_ok`), advance the method, and describe the step."""
    losses = torch.where(present, losses.cpu(), torch.full_like(losses.cpu(), float("nan")))
    if scaler is not None:
        _report_to_scaler(scaler, found_inf=not finite, device=device)
    elif not finite and not skip_ok:
        bad = [k for k in range(method.num_tasks) if present[k] and not losses[k].isfinite()]
        raise NonFiniteError(
            f"non-finite task losses or gradients (task losses {losses.tolist()}, bad tasks "
            f"{bad}); lower the learning rate or use a GradScaler to skip such steps"
        )
    if finite:
        method.advance()
    weights = torch.where(present, weights.detach().float().cpu(), 0.0)  # cached: absent -> 0
    return StepInfo(losses, weights, finite, refreshed=refreshed)


def mtl_after_step(
    method: MTLMethod,
    loss_fn: LossFn,
    task_ids: Tensor,
    task_counts: Tensor | None,
    model: nn.Module,
) -> None:
    """After `optimizer.step()`: hand the same batch's global task losses to `method.observe`.

    A no-op (no forward) unless the method sets `observes_after_step` (FAMO with same_batch:
    its logit update reads the loss decrease of ONE batch across the step). Same arguments as
    `mtl_backward`; one forward without gradient and, under DDP, one all-reduce of K numbers.
    """
    if not method.observes_after_step:
        return
    ids, counts = _check_inputs(method, task_ids, task_counts, model)
    with torch.no_grad():
        _, glob = _task_losses(loss_fn, ids, counts, method.num_tasks, model)
    method.observe(glob, (counts > 0).to(glob.device))


def task_sums(per_sample: Tensor, task_ids: Tensor, num_tasks: int) -> Tensor:
    """sum of the per-sample losses of each task [K] (by explicit task id, never by position)."""
    out = torch.zeros(num_tasks, dtype=per_sample.dtype, device=per_sample.device)
    return out.index_add(0, task_ids, per_sample)


def _weighted_step(
    method: MTLMethod,
    loss_fn: LossFn,
    ids: Tensor,
    counts: Tensor,
    present: Tensor,
    params: list[nn.Parameter],
    model: nn.Module,
    scale: float,
) -> tuple[Tensor, Tensor, bool]:
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
    objective = (weights.detach().to(local) * local).sum() * (world_of(model)[0] * scale)
    objective.backward()
    grads = [p.grad for p in params if p.grad is not None]
    if scale != 1.0:
        torch._foreach_mul_(grads, 1.0 / scale)
    return glob, weights, all_finite(grads, model)


def _task_losses(
    loss_fn: LossFn, ids: Tensor, counts: Tensor, k: int, model: nn.Module
) -> tuple[Tensor, Tensor]:
    """One forward: this rank's task sums / GLOBAL counts [K] (differentiable) and their sum
    over ranks, the global task losses (detached; one all-reduce of K numbers under DDP)."""
    per_sample = _call(loss_fn, torch.arange(ids.numel(), device=ids.device))
    local = task_sums(per_sample, ids, k) / counts.clamp_min(1).to(per_sample)
    glob = local.detach().clone()
    world, group = world_of(model)
    if world > 1:
        dist.all_reduce(glob, group=group)
    return local, glob


def _refresh_step(
    method: MTLMethod,
    loss_fn: LossFn,
    ids: Tensor,
    counts: Tensor,
    present: Tensor,
    params: list[nn.Parameter],
    model: nn.Module,
    scale: float,
) -> tuple[Tensor, Tensor, bool]:
    assert isinstance(method, GramianMethod)
    k = method.num_tasks
    world, group = world_of(model)
    buf = _buffer(method, params, k)
    local = torch.zeros(k, dtype=torch.float32, device=buf.device)
    for task in range(k):
        index = (ids == task).nonzero().squeeze(1)
        if index.numel() == 0:  # no local sample: zero row (other ranks may have some)
            buf[task].zero_()
            continue
        with no_sync(model):
            loss = _call(loss_fn, index).sum() / float(counts[task])
            (loss * scale).backward()
        local[task] = loss.detach().float()
        torch.cat([_flat_grad(p) for p in params], out=buf[task])
        for p in params:
            p.grad = None
    if world > 1:
        dist.all_reduce(buf, group=group)
        dist.all_reduce(local, group=group)
    if scale != 1.0:
        buf.mul_(1.0 / scale)
    present_d = present.to(local.device)
    gramian = buf @ buf.T  # an inf/NaN anywhere in row k makes G[k, k] non-finite: no extra pass
    if not bool(torch.isfinite(local[present_d]).all()) or not bool(gramian.isfinite().all()):
        return local, torch.zeros(k), False
    weights = method.refresh(gramian, present.cpu())
    combined = weights.to(buf) @ buf
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = combined[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return local, weights, True


def _check_inputs(
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


def _call(loss_fn: LossFn, index: Tensor) -> Tensor:
    out = loss_fn(index)
    if not isinstance(out, Tensor) or out.shape != (index.numel(),):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AntError(
            f"loss_fn must return per-sample losses of shape ({index.numel()},), got {shape}"
        )
    return out.float()


def _flat_grad(p: nn.Parameter) -> Tensor:
    if p.grad is None:
        return torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
    return p.grad.reshape(-1).float()


def _buffer(method: GramianMethod, params: list[nn.Parameter], k: int) -> Tensor:
    """The [K, P] float32 buffer, cached on the method (not in its state_dict) and reused."""
    total = sum(p.numel() for p in params)
    buf = getattr(method, "_grad_buffer", None)
    if buf is None or buf.shape != (k, total) or buf.device != params[0].device:
        buf = torch.empty(k, total, dtype=torch.float32, device=params[0].device)
        method._grad_buffer = buf
    return buf


def _report_to_scaler(scaler: torch.amp.GradScaler, found_inf: bool, device: torch.device) -> None:
    """Record this step's overflow in the GradScaler (public API only) and update its scale."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.full((1,), float("inf") if found_inf else 0.0, device=device)
    scaler.unscale_(torch.optim.SGD([probe], lr=0.0))
    scaler.update()

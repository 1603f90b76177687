"""Gradient accumulation: N micro-batches, one update, equal to `mtl_backward` on their
concatenation (the same global batch), for every method.

    acc = Accumulation(method, model, task_counts, micro_batches=N)   # counts of ALL N
    for loss_fn, task_ids in micro_batches:
        acc.add(loss_fn, task_ids)            # backward passes; DDP syncs on the last only
    info = acc.step()                         # the combined gradient is in `.grad`

A task loss of the whole batch is L_k = sum over micro-batches of their task-k sums, divided by
the task's count in the WHOLE batch, so the counts must be known up front (draw the timesteps of
all N micro-batches first). The update sum_k w_k grad L_k then needs the weights w:

* weighted mode, one backward per micro-batch: for methods whose weights do not depend on the
  current losses (mean, uncertainty weighting: `LossMethod.weights_from_losses` False) and for
  Gramian methods between refreshes (their cached weights). The method's own parameters (UW's
  log-variances) get their gradient at `step`, from the losses of the whole batch.
* per-task mode, one backward per task and micro-batch into the [K, P] buffer of the task
  gradients (as a Gramian method's refresh step): for FAMO, whose weights depend on the losses
  of the whole batch, and for refresh steps; `step` combines them. It costs K backward passes
  per micro-batch instead of one.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.engine import (
    LossFn,
    StepInfo,
    _buffer,
    _call,
    _check_inputs,
    _finish,
    _flat_grad,
    _keep_scaled,
    _scale,
    task_sums,
)
from antdiff.mtl.parallel import all_finite, is_fsdp, no_sync, world_of


class Accumulation:
    """One optimizer step over `micro_batches` calls of `add` (see the module docstring)."""

    def __init__(
        self,
        method: MTLMethod,
        model: nn.Module,
        task_counts: Tensor,
        micro_batches: int,
        scaler: torch.amp.GradScaler | None = None,
        keep_scaled: bool = False,
    ) -> None:
        if micro_batches < 1:
            raise AntError(f"micro_batches must be >= 1, got {micro_batches}")
        k = method.num_tasks
        self.counts = torch.as_tensor(task_counts).long().cpu()
        if self.counts.shape != (k,) or int(self.counts.sum()) == 0:
            raise AntError(f"task_counts must be the {k} counts of the whole accumulated batch")
        self.method, self.model, self.n = method, model, micro_batches
        self.present = self.counts > 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        for p in self.params:
            p.grad = None
        method.zero_grad(set_to_none=True)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.scale = _scale(self.scaler, self.params[0].device)
        self.keep_scaled = keep_scaled and self.scaler is not None  # as in `mtl_backward`
        self.refresh = isinstance(method, GramianMethod) and method.needs_refresh()
        self.per_task = self.refresh or (
            isinstance(method, LossMethod) and method.weights_from_losses
        )
        if self.per_task and is_fsdp(model):
            raise AntError(
                f"{type(method).__name__} accumulates whole task gradients, which "
                "FSDP2 shards: use mean or uw, or no accumulation, under FSDP"
            )
        if self.per_task:
            self.buf = _buffer(method, self.params, k)
            self.buf.zero_()
        elif isinstance(method, LossMethod):  # the same weights whatever the losses
            ones = torch.ones(k, device=self.params[0].device)
            self.weights = method.task_weights(ones, self.present)
            method.zero_grad(set_to_none=True)
        else:
            self.weights = method.cached_weights()
        self.local = torch.zeros(k, dtype=torch.float32, device=self.params[0].device)
        self.seen = 0

    def add(self, loss_fn: LossFn, task_ids: Tensor) -> None:
        """The backward passes of one micro-batch (its local samples, as in `mtl_backward`)."""
        if self.seen == self.n:
            raise AntError(f"all {self.n} micro-batches were added already: call step()")
        ids, _ = _check_inputs(self.method, task_ids, self.counts, self.model, partial=True)
        self.seen += 1
        last = self.seen == self.n
        counts = self.counts.clamp_min(1).to(self.local)
        if not self.per_task:
            world = world_of(self.model)[0]
            with nullcontext() if last else no_sync(self.model):  # DDP decides in the forward
                per_sample = _call(loss_fn, torch.arange(ids.numel(), device=ids.device))
                local = task_sums(per_sample, ids, self.method.num_tasks) / counts
                ((self.weights.detach().to(local) * local).sum() * world * self.scale).backward()
            self.local += local.detach()
            return
        for task in range(self.method.num_tasks):
            index = (ids == task).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            with no_sync(self.model):
                loss = _call(loss_fn, index).sum() / counts[task]
                (loss * self.scale).backward()
            self.local[task] += loss.detach()
            self.buf[task] += torch.cat([_flat_grad(p) for p in self.params])
            for p in self.params:
                p.grad = None

    def step(self) -> StepInfo:
        """The combined gradient of the whole batch into `.grad` (unscaled, all-reduced)."""
        if self.seen != self.n:
            raise AntError(f"{self.seen} of {self.n} micro-batches added: add them all first")
        world, group = world_of(self.model)
        glob = self.local.clone()
        if world > 1:
            dist.all_reduce(glob, group=group)
        present = self.present.to(glob.device)
        finite = bool(torch.isfinite(glob[present]).all())
        weights = torch.zeros(self.method.num_tasks)
        if self.per_task and finite:
            if world > 1:
                dist.all_reduce(self.buf, group=group)
            if self.scale != 1.0:
                self.buf.mul_(1.0 / self.scale)
            weights, finite = self._combine(glob, present)
        elif finite:
            grads = [p.grad for p in self.params if p.grad is not None]
            if self.scale != 1.0:
                torch._foreach_mul_(grads, 1.0 / self.scale)
            finite = all_finite(grads, self.model)
            weights = self.weights
            if finite and isinstance(self.method, LossMethod):  # the method's own gradients
                self.method.task_weights(glob, present)
        if self.keep_scaled:
            _keep_scaled(self.params, self.method, self.scale, finite)
        scaler = None if self.keep_scaled else self.scaler
        return _finish(
            self.method,
            glob,
            weights,
            finite,
            self.present,
            scaler,
            self.params[0].device,
            refreshed=self.refresh,
            skip_ok=self.keep_scaled,
        )

    def _combine(self, glob: Tensor, present: Tensor) -> tuple[Tensor, bool]:
        """Weights from the whole batch's losses (FAMO) or Gramian (a refresh), combined."""
        if isinstance(self.method, GramianMethod):
            gramian = self.buf @ self.buf.T
            if not bool(gramian.isfinite().all()):
                return torch.zeros(self.method.num_tasks), False
            weights = self.method.refresh(gramian, self.present)
        else:
            assert isinstance(self.method, LossMethod)
            weights = self.method.task_weights(glob, present)
        combined = weights.to(self.buf) @ self.buf
        if not bool(torch.isfinite(combined).all()):
            return weights, False
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = combined[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        return weights, True

"""Gradient accumulation: N micro-batches, one update, equal to `ant_backward` on their
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
* per-task mode, one backward per task and micro-batch, added into the rows of the task
  gradients (`TaskGradients`, as in a Gramian method's refresh step): for FAMO, whose weights
  depend on the losses of the whole batch, and for refresh steps; `step` combines them. It
  costs K backward passes per micro-batch instead of one.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.parallel import is_fsdp, no_sync, world_of
from antdiff.mtl.rows import TaskGradients
from antdiff.mtl.step import (
    GradStep,
    LossFn,
    StepInfo,
    check_inputs,
    per_sample_losses,
    task_sums,
)


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
        self.grad = GradStep(method, model, scaler, keep_scaled)  # as in `ant_backward`
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
            self.rows = TaskGradients.reused(method, self.grad.params)
            self.rows.rows.zero_()
        elif isinstance(method, LossMethod):  # the same weights whatever the losses
            ones = torch.ones(k, device=self.grad.device)
            self.weights = method.task_weights(ones, self.present)
            method.zero_grad(set_to_none=True)
        else:
            self.weights = method.cached_weights()
        self.local = torch.zeros(k, dtype=torch.float32, device=self.grad.device)
        self.seen = 0

    def add(self, loss_fn: LossFn, task_ids: Tensor) -> None:
        """The backward passes of one micro-batch (its local samples, as in `ant_backward`)."""
        if self.seen == self.n:
            raise AntError(f"all {self.n} micro-batches were added already: call step()")
        ids, _ = check_inputs(self.method, task_ids, self.counts, self.model, partial=True)
        self.seen += 1
        last = self.seen == self.n
        scale = self.grad.scale
        if not self.per_task:
            counts = self.counts.clamp_min(1).to(self.local)
            world = world_of(self.model)[0]
            with nullcontext() if last else no_sync(self.model):  # DDP decides in the forward
                per_sample = per_sample_losses(
                    loss_fn, torch.arange(ids.numel(), device=ids.device)
                )
                local = task_sums(per_sample, ids, self.method.num_tasks) / counts
                ((self.weights.detach().to(local) * local).sum() * world * scale).backward()
            self.local += local.detach()
            return
        for task in range(self.method.num_tasks):
            index = (ids == task).nonzero().squeeze(1)
            if index.numel():
                count = self.counts[task]
                self.local[task] += self.rows.backward(
                    task, loss_fn, index, count, self.model, scale, add=True
                )

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
            self.rows.reduce(self.model, self.grad.scale)
            weights, finite = self._combine(glob, present)
        elif finite:
            finite = self.grad.unscale_grads()
            weights = self.weights
            if finite and isinstance(self.method, LossMethod):  # the method's own gradients
                self.method.task_weights(glob, present)
        return self.grad.finish(glob, weights, finite, self.present, refreshed=self.refresh)

    def _combine(self, glob: Tensor, present: Tensor) -> tuple[Tensor, bool]:
        """Weights from the whole batch's losses (FAMO) or Gramian (a refresh), combined."""
        if isinstance(self.method, GramianMethod):
            gramian = self.rows.gramian()
            if not bool(gramian.isfinite().all()):
                return torch.zeros(self.method.num_tasks), False
            weights = self.method.refresh(gramian, self.present)
        else:
            assert isinstance(self.method, LossMethod)
            weights = self.method.task_weights(glob, present)
        return weights, self.rows.write_combined(weights)

"""Per-task gradients as the rows of one [K, P] float32 matrix (P: the trainable parameters),
the one per-task backward path of the engine's refresh step and of accumulation's per-task mode.

A task loss depends only on its own samples, so one forward/backward per task sub-batch gives
its exact gradient (DESIGN: measured cheapest, about 1.05-1.3x a normal step), under
`no_sync` so that DDP does not average each pass; the rows are all-reduced once (SUM). The
matrix is allocated once per (method, model) and reused across steps: it is kept by this
module, keyed weakly by the method, never stored on the method itself.
"""

from __future__ import annotations

import weakref

import torch
import torch.distributed as dist
from torch import Tensor, nn

from antdiff.mtl.base import MTLMethod
from antdiff.mtl.parallel import no_sync, world_of
from antdiff.mtl.step import LossFn, per_sample_losses

_REUSED: weakref.WeakKeyDictionary[MTLMethod, TaskGradients] = weakref.WeakKeyDictionary()


class TaskGradients:
    """The [K, P] rows g_k = grad L_k (flattened, float32) of `params`, and their use: the
    Gramian G = g g^T and the combined gradient sum_k w_k g_k written into `.grad`."""

    def __init__(self, params: list[nn.Parameter], num_tasks: int) -> None:
        self.params = params
        total = sum(p.numel() for p in params)
        self.rows = torch.empty(num_tasks, total, dtype=torch.float32, device=params[0].device)

    @classmethod
    def reused(cls, method: MTLMethod, params: list[nn.Parameter]) -> TaskGradients:
        """The rows of `method`'s tasks over `params`: those of its previous step when they fit
        (same size and device; their values are stale), else new ones."""
        k, total = method.num_tasks, sum(p.numel() for p in params)
        rows = _REUSED.get(method)
        if rows is None or rows.rows.shape != (k, total) or rows.rows.device != params[0].device:
            rows = cls(params, k)
            _REUSED[method] = rows
        rows.params = params
        return rows

    def backward(
        self,
        task: int,
        loss_fn: LossFn,
        index: Tensor,
        count: float,
        model: nn.Module,
        scale: float = 1.0,
        add: bool = False,
    ) -> Tensor:
        """One forward/backward of task `task`'s local samples `index`: its loss
        sum_i l_i / count (count: the task's samples in the global batch), scaled by `scale`
        for backward; the gradient is written (or, `add`, added) into row `task` and `.grad`
        cleared. Returns the unscaled loss (detached, float32)."""
        with no_sync(model):
            loss = per_sample_losses(loss_fn, index).sum() / float(count)
            (loss * scale).backward()
        grads = [_flat(p) for p in self.params]
        if add:
            self.rows[task] += torch.cat(grads)
        else:
            torch.cat(grads, out=self.rows[task])
        for p in self.params:
            p.grad = None
        return loss.detach().float()

    def reduce(self, model: nn.Module, scale: float = 1.0) -> None:
        """Sum the rows over the processes (one all-reduce) and divide them by the AMP scale."""
        world, group = world_of(model)
        if world > 1:
            dist.all_reduce(self.rows, group=group)
        if scale != 1.0:
            self.rows.mul_(1.0 / scale)

    def gramian(self) -> Tensor:
        """G = g g^T [K, K]; an inf/NaN anywhere in row k makes G[k, k] non-finite."""
        return self.rows @ self.rows.T

    def write_combined(self, weights: Tensor) -> bool:
        """`.grad` = sum_k w_k g_k (in each parameter's dtype), unless it is not finite: then
        False and `.grad` untouched."""
        combined = weights.to(self.rows) @ self.rows
        if not bool(torch.isfinite(combined).all()):
            return False
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = combined[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        return True


def _flat(p: nn.Parameter) -> Tensor:
    if p.grad is None:
        return torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
    return p.grad.reshape(-1).float()

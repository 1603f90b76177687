"""The two kinds of multi-task method, and what the engine needs from each.

A task k has a loss L_k (the mean per-sample loss over its samples in the global batch) and a
gradient g_k = grad L_k. Every method, whatever its kind, ends in one update

    sum_k w_k g_k,

so every method reports its weights w [K] on the raw task losses (for logging and so that steps
between weight refreshes are a single weighted backward). Two kinds, after torchjd's split of
aggregators into a weighting of the Gramian (github.com/TorchJD/torchjd):

* `LossMethod`: losses [K] -> scalar objective (mean, uncertainty weighting, FAMO); its weights
  are d objective / d L_k, found by autograd on K numbers: no per-task gradient is needed.
* `GramianMethod`: Gramian [K, K] of the task gradients -> weights [K] (PCGrad, Nash-MTL,
  torchjd weightings), as torchjd's `Weighting`; the per-task gradients come from the engine.

Absent tasks (no sample anywhere in the global batch) are given by a `present` mask: every method
gives them weight 0 and works on the present subset as if K were the number of present tasks
(UW keeps the paper's 1/K with the configured K, so its stationary point does not move).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.options import Param

#: the options every Gramian method shares (`--method-options`)
UPDATE_EVERY = Param("update_every", int, 1, 1, 1e6, help="steps between weight refreshes")
SEED = Param("seed", int, 0, 0, 2**32 - 1, help="seed of the method's own random numbers")


class MTLMethod(nn.Module):
    """Base of all methods: K tasks, own state in `state_dict`, own optimizer groups.

    A method declares what it needs: `options` (its `--method-options`, checked by
    `antdiff.options` in `build_method`), `per_task_gradients` (the engine computes one
    gradient per task and the method weighs them from their Gramian; a learned loss weighting,
    whose own parameters get no combined gradient that way, is refused with it) and
    `equal_task_weights`."""

    options: ClassVar[tuple[Param, ...]] = ()
    per_task_gradients: ClassVar[bool] = False
    #: fixed equal weights on the K interval losses: it undoes a sampler's density over them
    equal_task_weights: ClassVar[bool] = False

    #: Gradient-norm clip the trainer applies when the user sets none (Nash-MTL: 1.0).
    default_max_grad_norm: float | None = None

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if int(num_tasks) != num_tasks or num_tasks < 1:
            raise AntError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = int(num_tasks)
        # Optimizer steps taken (finite steps only); drives refresh schedules and resume.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param-group dicts for the method's own parameters ([] if it has none)."""
        return []

    def advance(self) -> None:
        """Called by the engine after each finite step."""
        self.step += 1

    #: True: the trainer calls `observe` with the same batch's task losses after each step.
    observes_after_step: bool = False
    #: True: the model's update uses the shares [K] the timestep sampler gives for each batch
    #: (`set_shares` before the backward; the `sampled:` wrapper, antdiff.mtl.sampled).
    takes_shares: bool = False
    #: With `takes_shares`: the shares alone are the objective, so the density must follow the
    #: method's weights (`--timestep-sampling follow`; `anchored:` corrects any density instead).
    needs_follow: bool = False

    def sampling_weights(self, step_weights: Tensor) -> Tensor:
        """The task weights [K] a timestep sampler that follows the method should follow:
        the step's effective weights `step_weights`, unless the method trains on others."""
        return step_weights

    def observe(self, losses: Tensor, present: Tensor) -> None:
        """Global task losses [K] of the batch just trained on, at the updated parameters."""

    def present_mask(self, present: Tensor | None, device: torch.device) -> Tensor:
        """Validated bool mask [K] of tasks present in the global batch (all if None)."""
        if present is None:
            return torch.ones(self.num_tasks, dtype=torch.bool, device=device)
        if present.shape != (self.num_tasks,):
            raise AntError(
                f"present mask has shape {tuple(present.shape)}, expected ({self.num_tasks},)"
            )
        present = present.to(device=device, dtype=torch.bool)
        if not bool(present.any()):
            raise AntError("no task has a sample in the batch")
        return present

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


class LossMethod(MTLMethod):
    """losses [K] -> scalar objective; may hold learnable parameters (trained by the caller)."""

    #: Whether the task weights d objective / d L_k depend on the losses L (FAMO) or only on the
    #: method's state (mean, uncertainty weighting): gradient accumulation needs to know.
    weights_from_losses: bool = True

    def forward(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def check_losses(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise AntError(
                f"{type(self).__name__} expects {self.num_tasks} task losses, "
                f"got shape {tuple(losses.shape)}"
            )

    def task_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """Weights d objective / d L_k at `losses` (0 for absent tasks).

        Also back-propagates the objective into the method's own parameters (their `.grad`),
        and applies any per-step state update of the method (FAMO), so call it once per step.
        """
        present = self.present_mask(present, losses.device)
        leaf = torch.where(present, losses.detach(), torch.zeros_like(losses)).requires_grad_()
        with torch.enable_grad():
            self(leaf, present).backward()
        assert leaf.grad is not None
        return torch.where(present, leaf.grad, torch.zeros_like(leaf.grad))


class GramianMethod(MTLMethod):
    """Gramian [K, K] of the raw task gradients -> weights [K], refreshed every `update_every`.

    Between refreshes the cached weights are reused, so the engine needs only one weighted
    backward (as the paper's Nash-MTL code, which refreshes every 25 steps).
    """

    per_task_gradients = True
    options = (UPDATE_EVERY,)

    def __init__(self, num_tasks: int, update_every: int = 1) -> None:
        super().__init__(num_tasks)
        if int(update_every) != update_every or update_every < 1:
            raise AntError(f"update_every must be a positive integer, got {update_every!r}")
        self.update_every = int(update_every)
        self.register_buffer("cached", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("has_cached", torch.zeros((), dtype=torch.bool))

    def solve(self, gramian: Tensor) -> Tensor:
        """Weights [n] on the raw gradients of the n present tasks, from their Gramian [n, n]."""
        raise NotImplementedError

    def needs_refresh(self) -> bool:
        return not bool(self.has_cached) or int(self.step) % self.update_every == 0

    def refresh(self, gramian: Tensor, present: Tensor | None = None) -> Tensor:
        """Solve for new weights on the present subset, cache and return them ([K], float64)."""
        k = self.num_tasks
        if gramian.shape != (k, k):
            raise AntError(f"Gramian has shape {tuple(gramian.shape)}, expected ({k}, {k})")
        g = gramian.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(g).all()):
            raise AntError("the Gramian of the task gradients is not finite")
        present = self.present_mask(present, g.device)
        sub = g[present][:, present]
        w_sub = self.solve(sub).to(torch.float64)
        if w_sub.shape != (sub.shape[0],) or not bool(torch.isfinite(w_sub).all()):
            raise AntError(f"{type(self).__name__} produced invalid weights {w_sub.tolist()}")
        w = torch.zeros(k, dtype=torch.float64)
        w[present] = w_sub
        self.cached.copy_(w)
        self.has_cached.fill_(True)
        return w.clone()

    def cached_weights(self) -> Tensor:
        if not bool(self.has_cached):
            raise AntError(f"{type(self).__name__} has no weights yet: refresh it first")
        return self.cached.clone()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, update_every={self.update_every}"

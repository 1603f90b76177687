"""ANT inside a HuggingFace accelerate training loop (extra `ant-diffusion[accelerate]`),
exact with gradient accumulation, fp16 loss scaling and DDP.

    method = build_method("uw", num_tasks=partition.k)                 # NOT accelerator.prepare(d)
    optimizer = AdamW([{"params": unet.parameters()}, *method.param_groups()], lr=lr)
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    ant = AcceleratedMTL(accelerator, method, StratifiedSampler(partition))
    accelerator.register_for_checkpointing(method)                    # UW's log-variances
    for batch in loader:
        with accelerator.accumulate(unet):
            t, task_ids = ant.timesteps(len(batch))                   # instead of randint
            ...                                                        # noise, x_t, as before
            ant.backward(loss_fn, task_ids, unet)                      # instead of backward(loss)
            optimizer.step(); optimizer.zero_grad()

What it takes care of: the timesteps of a whole accumulation window are drawn at its first
micro-batch, so the task counts of the whole (global) accumulated batch are known and the update
equals one step on it (antdiff.mtl.Accumulation); the gradients are left multiplied by
accelerate's loss scale for its optimizer to unscale, skip and update the scale (ant_backward's
`keep_scaled`), which counts each step once; the gradient is never divided by the accumulation
steps twice (accelerate's `backward` does that division, `AcceleratedMTL.backward` replaces it).
DeepSpeed is refused; under FSDP2 the engine takes the loss-based methods only
(antdiff.mtl.parallel), which is checked with `fully_shard` itself, not accelerate's plugin.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from antdiff.errors import AntError
from antdiff.mtl import Accumulation, MTLMethod, StepInfo
from antdiff.tasks import TimestepSampler


class AcceleratedMTL:
    """One MTL method and timestep sampler serving an `accelerate.Accelerator` loop."""

    def __init__(
        self,
        accelerator: Any,
        method: MTLMethod,
        sampler: TimestepSampler,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(method, MTLMethod):
            raise AntError("pass the MTL method itself, not accelerator.prepare(method)")
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
            raise AntError(
                "DeepSpeed is not supported: its ZeRO stages partition gradients "
                "outside autograd, so the MTL update cannot be written exactly"
            )
        if sampler.needs_losses:
            raise AntError(
                f"{sampler.name} timestep sampling learns from the trainer's losses: "
                "use it with `antdiff train`, or a fixed sampler here"
            )
        if getattr(sampler, "needs_gramian", False):  # a duck-typed sampler may not declare it
            raise AntError(
                f"{sampler.name} timestep sampling learns from the task Gramian of the "
                "trainer's steps: use it with `antdiff train`, or a fixed sampler here"
            )
        self.accelerator, self.method, self.sampler = accelerator, method, sampler
        self.generator = generator
        self.window: list[tuple[Tensor, Tensor]] = []  # the window's (t, task) per micro-batch
        self.counts: Tensor | None = None
        self.acc: Accumulation | None = None
        method.to(accelerator.device)

    @property
    def steps(self) -> int:
        return int(self.accelerator.gradient_accumulation_steps)

    def timesteps(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(t, task ids) of this micro-batch (on the accelerator's device); at the first
        micro-batch of a window, the whole window is drawn and its global task counts found."""
        if not self.window:
            t, task = self.sampler.sample(batch_size * self.steps, self.generator)
            local = torch.bincount(task, minlength=self.method.num_tasks)
            self.counts = self.accelerator.reduce(local.to(self.accelerator.device), "sum").cpu()
            self.window = list(zip(t.split(batch_size), task.split(batch_size), strict=True))
        t, task = self.window.pop(0)
        device = self.accelerator.device
        return t.to(device), task.to(device)

    def backward(self, loss_fn: Any, task_ids: Tensor, model: nn.Module) -> StepInfo | None:
        """The MTL backward of one micro-batch, in place of `accelerator.backward(loss)`; at the
        last micro-batch of the window the combined gradient is in `.grad` and its StepInfo is
        returned (None before). `loss_fn(index)` returns the per-sample losses of the
        micro-batch's samples `index`, as for `ant_backward`."""
        if self.counts is None:
            raise AntError("draw the micro-batch's timesteps with AcceleratedMTL.timesteps")
        if self.acc is None:
            self.acc = Accumulation(
                self.method,
                model,
                self.counts,
                self.steps,
                scaler=self.accelerator.scaler,
                keep_scaled=True,
            )
        self.acc.add(loss_fn, task_ids)
        if not self.accelerator.sync_gradients:
            return None
        if self.window:
            raise AntError(
                f"accelerate synced after {self.acc.seen} of {self.steps} micro-"
                "batches: make the loader's length a multiple of the steps"
            )
        step_info, self.acc, self.counts = self.acc.step(), None, None
        return step_info

"""Run by tests/test_accelerate.py: one process (python) or 2 (`accelerate launch`, CPU, gloo).

For each method, 3 optimizer steps of a tiny MLP in an `accelerate` loop (gradient accumulation
over 2 micro-batches, `AcceleratedMTL`, the method's parameters in the prepared optimizer,
accelerate's gradient clipping) must give the parameters of a plain one-process loop taking
`ant_backward` on each step's whole global batch. The timesteps' task ids are fixed (a task
present on one rank and one micro-batch only). With `--scaler`, accelerate's optimizer holds a
GradScaler (as with fp16 on a GPU; here on CPU, fp32 forward): the update must still equal the
plain loop, the scale must move once per step, and an overflowing step must be skipped.
Writes {case: value} as JSON to argv[1] (rank 0).
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from torch import nn

from antdiff.integrations.accelerate import AcceleratedMTL
from antdiff.mtl import ant_backward, build_method

K, STEPS, MICRO, GLOBAL = 3, 3, 2, 16
METHODS = {"mean": {}, "uw": {}, "famo": {}, "pcgrad": {"seed": 7}, "nash": {"update_every": 2}}
IDS = torch.tensor([0, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 2, 1, 2, 0])  # task 2: last quarter only
SCALE = torch.tensor([1.0, 4.0, 0.25])


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL, 4, generator=gen), torch.randn(GLOBAL, 2, generator=gen)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


class FixedTasks:
    """A timestep sampler whose windows are this rank's share of IDS (t = the sample's index)."""

    needs_losses = False

    def __init__(self, rank: int, world: int) -> None:
        share = GLOBAL // world
        self.index = torch.arange(rank * share, (rank + 1) * share)

    def sample(self, n: int, generator: torch.Generator | None = None):
        assert n == len(self.index)
        return self.index.clone(), IDS[self.index]

    def importance(self, t: torch.Tensor) -> None:
        return None


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor):
    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        return ((model(x[index]) - y[index]) ** 2).mean(dim=1) * SCALE[ids[index]]

    return loss_fn


def plain(name: str, clip: float) -> list[torch.Tensor]:
    net = make_model()
    method = build_method(name, num_tasks=K, **METHODS[name])
    opt = torch.optim.SGD([{"params": net.parameters()}, *method.param_groups()], lr=0.1)
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        ant_backward(method, loss_of(net, x, y, IDS), IDS, None, net)
        nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def accelerated(name: str, clip: float, scaler: bool) -> tuple[list[torch.Tensor], dict]:
    precision = "fp16" if scaler else "no"
    accelerator = Accelerator(
        gradient_accumulation_steps=MICRO, mixed_precision=precision, cpu=True
    )
    if scaler:  # what accelerate sets up for fp16 on a GPU: fp16 autocast, a GradScaler
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    net = make_model()
    method = build_method(name, num_tasks=K, **METHODS[name])
    opt = torch.optim.SGD([{"params": net.parameters()}, *method.param_groups()], lr=0.1)
    model, opt = accelerator.prepare(net, opt)
    rank, world = accelerator.process_index, accelerator.num_processes
    ant = AcceleratedMTL(accelerator, method, FixedTasks(rank, world))
    micro = GLOBAL // world // MICRO
    extra: dict = {}
    for step in range(STEPS + scaler):
        x, y = global_batch(min(step, STEPS - 1))
        overflow = scaler and step == STEPS  # one more step whose loss is inf: skipped
        before = [p.detach().clone() for p in net.parameters()]
        for m in range(MICRO):
            with accelerator.accumulate(model):
                t, ids = ant.timesteps(micro)
                loss_fn = loss_of(model, x[t], y[t] * (float("inf") if overflow else 1.0), ids)
                step_info = ant.backward(loss_fn, ids, model)
                assert (step_info is None) == (m < MICRO - 1)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad()
        if scaler:
            extra[f"scale_after_{step}"] = accelerator.scaler.get_scale()
        if overflow:
            extra["overflow_skipped"] = all(
                torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True)
            )
    return [p.detach().clone() for p in net.parameters()], extra


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest difference of the two runs' parameter CHANGES, relative to the plain run's."""
    init = [p.detach() for p in make_model().parameters()]
    pairs = zip(a, b, init, strict=True)
    return max(float((x - y).abs().max() / (y - p).abs().max()) for x, y, p in pairs)


def main() -> None:
    scaler = "--scaler" in sys.argv
    results: dict = {}
    for name in METHODS:
        clip = 0.5 if name == "uw" else 100.0  # one method whose gradient the clip changes
        params, extra = accelerated(name, clip, scaler)
        results[name] = rel_diff(params, plain(name, clip))
        results.update({f"{name}:{k}": v for k, v in extra.items()})
    accelerator = Accelerator(cpu=True)
    results["processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()

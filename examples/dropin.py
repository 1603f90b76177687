"""ANT in a plain diffusers training loop: the lines marked `# ANT` are all it takes.

Trains a small UNet2DModel on scikit-learn's 8x8 digits with 5 timestep intervals as tasks and
uncertainty weighting (the paper's ANT-UW). Run: python examples/dropin.py [--steps 300]
Under DDP pass the per-task counts of the GLOBAL batch instead of None, and the DDP module.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits

from antdiff.errors import AntError
from antdiff.mtl import ant_after_step, ant_backward, build_method  # ANT
from antdiff.tasks import IntervalPartition, StratifiedSampler  # ANT


def denoising_loss(unet: UNet2DModel, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """The per-sample loss of any sub-batch idx, as ant_backward calls it (one per task)."""

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        pred = unet(xt[idx], t[idx]).sample
        return F.mse_loss(pred, noise[idx], reduction="none").mean(dim=(1, 2, 3))

    return loss_fn


def main(steps: int = 300, method_name: str = "uw", batch_size: int = 64) -> list[float]:
    torch.manual_seed(0)
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8 - 1
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    partition = IntervalPartition.uniform(1000, 5)  # ANT: 5 timestep intervals = 5 tasks
    sampler = StratifiedSampler(partition)  # ANT: B/k samples per interval, with task ids
    method = build_method(method_name, num_tasks=partition.k)  # ANT: uw, nash, pcgrad, famo...
    groups = [{"params": unet.parameters()}, *method.param_groups()]  # ANT: + UW's own group
    optimizer = torch.optim.AdamW(groups, lr=1e-3)

    history = []
    for step in range(steps):
        x0 = images[torch.randint(len(images), (batch_size,))]
        noise = torch.randn_like(x0)
        t, task_ids = sampler.sample(batch_size)  # ANT: instead of torch.randint(0, 1000, ...)
        xt = scheduler.add_noise(x0, noise, t)
        loss_fn = denoising_loss(unet, xt, t, noise)

        optimizer.zero_grad()
        info = ant_backward(method, loss_fn, task_ids, None, unet)  # ANT: not loss.backward()
        if method.default_max_grad_norm is not None:  # nash: clip to 1.0 as the paper
            torch.nn.utils.clip_grad_norm_(unet.parameters(), method.default_max_grad_norm)
        if info.finite:
            optimizer.step()
            ant_after_step(method, loss_fn, task_ids, None, unet)  # no-op but for FAMO same_batch
        history.append(float(info.task_losses.nanmean()))
        if step % 50 == 0 or step == steps - 1:
            losses = ", ".join(f"{v:.3f}" for v in info.task_losses.tolist())
            print(f"step {step:4d}  task losses [{losses}]  weights {info.task_weights.tolist()}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--method", default="uw")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    try:
        main(args.steps, args.method)
    except AntError as e:  # e.g. an unknown --method: one line, exit status 2
        parser.exit(2, f"{parser.prog}: error: {e}\n")

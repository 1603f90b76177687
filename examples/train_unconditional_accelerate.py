"""diffusers' unconditional training pattern (examples/unconditional_image_generation) with ANT.

An image folder, a UNet2DModel, a DDPMScheduler, EMA, HuggingFace accelerate (mixed precision,
gradient accumulation, DDP), checkpoints with `accelerator.save_state`; the lines marked `# ANT`
are what ANT changes (README: "Use ANT with accelerate / diffusers scripts").

    accelerate launch --multi_gpu --num_processes 2 examples/train_unconditional_accelerate.py \\
        --train-data-dir IMAGES --resolution 32 --gradient-accumulation-steps 2 \\
        --ant-method uw --ant-clusters log-snr:5 --output-dir runs/accelerate

(`--multi_gpu` starts the processes; on a machine without GPUs they train as one CPU job with
gloo.) A bad argument is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset

from antdiff.data import load_folder
from antdiff.diffusion import NoiseSchedule  # ANT
from antdiff.errors import AntError
from antdiff.integrations.accelerate import AcceleratedMTL  # ANT
from antdiff.mtl import build_method  # ANT
from antdiff.tasks import build_timestep_sampler, clustering_from_spec  # ANT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.error = lambda message: p.exit(2, f"{p.prog}: error: {message}\n")  # one line
    p.add_argument("--train-data-dir", required=True)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train-batch-size", type=int, default=16, help="per process")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--num-steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--output-dir", default="runs/accelerate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ant-method", default="uw", help="uw, mean, famo, pcgrad, nash, ...")  # ANT
    p.add_argument("--ant-clusters", default="log-snr:5", help="COST:K[:FILE]")  # ANT
    p.add_argument("--ant-sampling", default="stratified", help="timestep sampling")  # ANT
    args = p.parse_args(argv)
    for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "num_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.checkpointing_steps < 1:
        p.error(f"--checkpointing-steps must be >= 1, got {args.checkpointing_steps}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        p.error(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if not 0 <= args.ema_decay < 1:
        p.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not 0 <= args.seed < 2**32:
        p.error(f"--seed must be in 0..2**32 - 1, got {args.seed}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without GPUs: one multi-process CPU job (gloo)
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
    )
    set_seed(args.seed, device_specific=True)  # each process draws its own noise and timesteps
    images = load_folder(args.train_data_dir, args.resolution).x  # [N, C, H, W] in [-1, 1]
    if len(images) < args.train_batch_size * accelerator.num_processes:  # else no batch, ever
        raise AntError(
            f"{args.train_data_dir} holds {len(images)} images, fewer than one batch "
            f"({args.train_batch_size} x {accelerator.num_processes} processes)"
        )
    loader = DataLoader(
        TensorDataset(images), batch_size=args.train_batch_size, shuffle=True, drop_last=True
    )
    model = UNet2DModel(
        sample_size=args.resolution,
        in_channels=images.shape[1],
        out_channels=images.shape[1],
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    schedule = NoiseSchedule.from_name("linear", 1000)  # ANT: the same betas as the scheduler
    partition = clustering_from_spec(args.ant_clusters, schedule).partition  # ANT
    method = build_method(args.ant_method, num_tasks=partition.k)  # ANT: not prepared
    groups = [{"params": model.parameters()}, *method.param_groups()]  # ANT: + the method's group
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    sampler = build_timestep_sampler(args.ant_sampling, partition)  # ANT
    ant = AcceleratedMTL(accelerator, method, sampler)  # ANT
    accelerator.register_for_checkpointing(method, sampler)  # ANT: saved with save_state
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=args.ema_decay)
    out = Path(args.output_dir)
    step = 0
    while step < args.num_steps:
        for (clean,) in loader:
            with accelerator.accumulate(model):
                noise = torch.randn_like(clean)
                t, task_ids = ant.timesteps(len(clean))  # ANT: instead of torch.randint
                noisy = scheduler.add_noise(clean, noise, t)

                def loss_fn(index: torch.Tensor, noisy=noisy, t=t, noise=noise) -> torch.Tensor:
                    pred = model(noisy[index], t[index]).sample  # ANT: per-sample losses
                    return F.mse_loss(pred.float(), noise[index].float(), reduction="none").mean(
                        dim=(1, 2, 3)
                    )

                info = ant.backward(loss_fn, task_ids, model)  # ANT: not accelerator.backward
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            ema.step(accelerator.unwrap_model(model).parameters())
            step += 1
            if accelerator.is_main_process and (step % 10 == 0 or step == args.num_steps):
                losses = [round(v, 4) for v in info.task_losses.tolist()]  # ANT: per task
                weights = [round(w, 3) for w in info.task_weights.tolist()]
                print(f"step {step}  task losses {losses}  weights {weights}", flush=True)
            if step % args.checkpointing_steps == 0 or step == args.num_steps:
                accelerator.save_state(out / f"checkpoint-{step}")
            if step >= args.num_steps:
                break
    total = sum(p.detach().double().sum() for p in model.parameters()).reshape(1)
    in_sync = bool((accelerator.gather(total) == total).all())  # every process: the same weights
    if accelerator.is_main_process:
        ema.copy_to(accelerator.unwrap_model(model).parameters())
        accelerator.unwrap_model(model).save_pretrained(out / "unet")
        n = accelerator.num_processes
        print(f"{n} processes, weights {'in sync' if in_sync else 'DIFFER'}", flush=True)
        print(f"done: {step} steps, loss {math.fsum(info.task_losses.nan_to_num().tolist()):.4f}")


if __name__ == "__main__":
    try:
        main()
    except AntError as e:  # a folder with no images, an unknown --ant-method, ...: exit 2
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)

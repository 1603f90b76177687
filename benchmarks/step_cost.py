"""Cost of one training step per MTL method, relative to vanilla measured in the same run.

For each model (8x8 digits UNet2DModel ~0.7M params; 32x32 UNet2DModel ~2.7M) and each number of
tasks K in {2, 5, 10}: ms/step (forward, backward, optimizer step) and the peak extra memory of
a step, for vanilla (plain `loss.mean().backward()`), `mean` through `mtl_backward`, uw, famo,
pcgrad and nash (refresh every 25: (refresh + 24 cached steps) / 25, both measured).
Methods are interleaved round-robin over repeats, so drift in machine load hits all of them.
Peak memory: CUDA max_memory_allocated above the model; on CPU the peak RSS of a forked child
running two steps, above the parent's RSS at the fork.

    python benchmarks/step_cost.py --quick --out step_cost.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from antdiff.mtl import build_method, mtl_backward
from antdiff.tasks import IntervalPartition, StratifiedSampler

MODELS: dict[str, dict[str, Any]] = {
    "digits8": {
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    },
    "unet32": {
        "sample_size": 32,
        "block_out_channels": (32, 64, 128),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    },
}
# variant -> (method name, options); nash is timed as refresh-every-step and cached-only.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "mean": ("mean", {}),
    "uw": ("uw", {}),
    "famo": ("famo", {}),
    "pcgrad": ("pcgrad", {}),
    "nash-refresh": ("nash", {"update_every": 1}),
    "nash-cached": ("nash", {"update_every": 10**9}),
}
NASH_EVERY = 25


def build_unet(name: str) -> UNet2DModel:
    torch.manual_seed(0)
    cfg = {"layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8, **MODELS[name]}
    return UNet2DModel(in_channels=1, out_channels=1, **cfg)


def make_batches(size: int, batch: int, k: int, n: int, device: torch.device) -> list[tuple]:
    gen = torch.Generator().manual_seed(1)
    sampler = StratifiedSampler(IntervalPartition.uniform(1000, k))
    batches = []
    for _ in range(n):
        t, ids = sampler.sample(batch, generator=gen)
        xt = torch.randn(batch, 1, size, size, generator=gen)
        noise = torch.randn(batch, 1, size, size, generator=gen)
        batches.append((xt.to(device), t.to(device), noise.to(device), ids.to(device)))
    return batches


def make_stepper(unet: UNet2DModel, variant: str, k: int) -> Callable[[tuple], None]:
    name, options = VARIANTS[variant]
    method = None if name == "vanilla" else build_method(name, num_tasks=k, **options)
    groups = [{"params": unet.parameters()}, *(method.param_groups() if method else [])]
    opt = torch.optim.AdamW(groups, lr=1e-4)

    def step(batch: tuple) -> None:
        xt, t, noise, ids = batch

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            pred = unet(xt[idx], t[idx]).sample
            return F.mse_loss(pred, noise[idx], reduction="none").mean(dim=(1, 2, 3))

        opt.zero_grad(set_to_none=True)
        if method is None:
            loss_fn(torch.arange(len(ids), device=ids.device)).mean().backward()
        else:
            mtl_backward(method, loss_fn, ids, None, unet)
            if method.default_max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), method.default_max_grad_norm)
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable, batches: list, device: torch.device) -> list[float]:
    out = []
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        out.append(1000 * (time.perf_counter() - start))
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(model: str, variant: str, k: int, batches: list, queue: Any) -> None:
    unet = build_unet(model)
    step = make_stepper(unet, variant, k)
    base = _rss_mb()
    for batch in batches:
        step(batch)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)


def peak_memory_mb(model: str, variant: str, k: int, batches: list, device: torch.device) -> float:
    """Peak memory of two steps above the model and its inputs (MB)."""
    if device.type == "cuda":
        unet = build_unet(model).to(device)
        step = make_stepper(unet, variant, k)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for batch in batches[:2]:
            step(batch)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(model, variant, k, batches[:2], queue))
    proc.start()
    value = queue.get(timeout=600)
    proc.join()
    return float(value)


def measure(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for model in args.models:
        size, batch = MODELS[model]["sample_size"], args.batch[model]
        for k in args.tasks:
            batches = make_batches(size, batch, k, args.steps + 1, device)
            steppers = {}
            for variant in VARIANTS:
                unet = build_unet(model).to(device)
                steppers[variant] = make_stepper(unet, variant, k)
                steppers[variant](batches[0])  # warm-up (and nash-cached's one refresh)
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.repeats):
                for variant, step in steppers.items():
                    times[variant] += time_steps(step, batches[1:], device)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            med["nash"] = (med["nash-refresh"] + (NASH_EVERY - 1) * med["nash-cached"]) / NASH_EVERY
            params = sum(p.numel() for p in build_unet(model).parameters())
            for variant in [*VARIANTS, "nash"]:
                row = {"model": model, "params": params, "batch": batch, "K": k,
                       "method": variant, "ms_per_step": med[variant],
                       "ratio_to_vanilla": med[variant] / med["vanilla"]}  # fmt: skip
                if variant in times:
                    ts = sorted(times[variant])
                    row["ms_p10_p90"] = [ts[len(ts) // 10], ts[(9 * len(ts)) // 10]]
                    row["n_steps"] = len(ts)
                if args.memory and variant != "nash":
                    row["peak_mb"] = peak_memory_mb(model, variant, k, batches, device)
                rows.append(row)
                print(_format(row), flush=True)
    return rows


def _format(row: dict[str, Any]) -> str:
    mem = f"{row['peak_mb']:9.1f}" if "peak_mb" in row else " " * 9
    return (
        f"{row['model']:8s} K={row['K']:<3d} {row['method']:13s} {row['ms_per_step']:9.1f} ms"
        f"  x{row['ratio_to_vanilla']:5.2f}  {mem} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller 32x32 batch")
    parser.add_argument("--out", default="step_cost.json", help="JSON file for the results")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 5, 10])
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.steps, args.repeats = (3, 2) if args.quick else (5, 4)
    args.batch = {"digits8": 64, "unet32": 16 if args.quick else 64}
    if device.type == "cuda":
        args.batch = {"digits8": 256, "unet32": 128}
    print(f"device {device}, threads {args.threads}, steps x repeats {args.steps}x{args.repeats}")
    print(f"{'model':8s} {'K':5s} {'method':13s} {'ms/step':>12s}  {'ratio':>6s}  {'peak':>9s}")
    rows = measure(args, device)
    meta = {"device": str(device), "threads": args.threads, "torch": torch.__version__,
            "steps": args.steps, "repeats": args.repeats, "quick": args.quick,
            "load_average": os.getloadavg()}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

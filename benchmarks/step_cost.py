"""Cost of one training step per MTL method, relative to vanilla measured in the same run.

For each model (8x8 digits UNet2DModel ~0.7M params; 32x32 UNet2DModel ~2.7M) and each number of
tasks K in {2, 5, 10}: ms/step (forward, backward, optimizer step) and the peak extra memory of
a step, for vanilla (plain `loss.mean().backward()`), `mean` through `ant_backward`, uw, famo,
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
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from antdiff.models import build_model
from antdiff.mtl import ant_backward, build_method
from antdiff.tasks import IntervalPartition, StratifiedSampler

# name -> (antdiff model, image size, overrides of its diffusers config)
MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "digits8": ("unet-tiny", 8, {}),  # ~0.7M parameters
    "unet32": ("unet-small", 32, {"block_out_channels": (32, 64, 128)}),  # ~2.7M
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
    model, size, overrides = MODELS[name]
    return build_model(model, channels=1, size=size, **overrides).net


def machine() -> dict[str, Any]:
    """Where a measurement ran."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "gpu": gpu,
    }


def update_train_costs(path: Path, argvs: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """ms per training step of `antdiff train ARGV` for each name (vanilla among them), measured
    interleaved in this process; merged into the JSON at `path`, where older entries keep their
    values and the new ones are rescaled by vanilla's old/new ratio."""
    from antdiff.cli import train_config
    from antdiff.train import Trainer

    old = json.loads(path.read_text())["ms"] if path.is_file() else {}
    todo = [m for m in argvs if m not in old or m == "vanilla"]
    if todo == ["vanilla"] and old:
        return old
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            m: Trainer.start(train_config([*argvs[m], "--out", f"{tmp}/{m}"])) for m in todo
        }
        ms = interleaved_ms({m: t.train_step for m, t in trainers.items()}, rounds)
    scale = old["vanilla"] / ms["vanilla"] if old else 1.0
    new = {m: round(v * scale, 2) for m, v in ms.items() if m != "vanilla" or not old}
    note = "ms/step, interleaved in one process; later additions rescaled to vanilla"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ms": {**old, **new}, "note": note}, indent=1))
    return {**old, **new}


def interleaved_ms(steps: dict[str, Callable[[], Any]], rounds: int, per_round: int = 10) -> dict:
    """Median ms per call of each `steps[name]()`, the names interleaved round-robin in ONE
    process so that drift in the machine load hits all of them alike (3 warm-up calls each)."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append(1000 * (time.perf_counter() - start) / per_round)
    return {name: round(statistics.median(v), 2) for name, v in times.items()}


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
            ant_backward(method, loss_fn, ids, None, unet)
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
        size, batch = MODELS[model][1], args.batch[model]
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
                row = {
                    "model": model,
                    "params": params,
                    "batch": batch,
                    "K": k,
                    "method": variant,
                    "ms_per_step": med[variant],
                    "ratio_to_vanilla": med[variant] / med["vanilla"],
                }
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
    meta = {
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "quick": args.quick,
        "load_average": os.getloadavg(),
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

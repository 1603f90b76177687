"""A finished or running run directory: load its EMA model, sample it, export it, report it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from antdiff.checkpoint import latest_checkpoint, load_checkpoint
from antdiff.config import TrainConfig, load_run_config
from antdiff.errors import AntError
from antdiff.models import Denoiser
from antdiff.schedule import NoiseSchedule
from antdiff.tasks import IntervalPartition


@dataclass
class LoadedRun:
    path: Path
    cfg: TrainConfig
    meta: dict[str, Any]  # run.json: data kind/shape, classes, model name, partition
    model: Denoiser  # EMA weights, eval mode
    schedule: NoiseSchedule
    partition: IntervalPartition
    step: int


def load_run(run_dir: str | Path, ema: bool = True, device: str = "cpu") -> LoadedRun:
    """The run's model with its EMA (default) or raw weights from the latest checkpoint."""
    from antdiff.train import make_model

    path = Path(run_dir)
    cfg = load_run_config(path)
    info = path / "run.json"
    if not info.is_file():
        raise AntError(f"{path} has no run.json")
    meta = json.loads(info.read_text())
    ckpt = latest_checkpoint(path)
    weights, ema_weights, state = load_checkpoint(ckpt)
    model = make_model(cfg, meta)
    try:
        model.load_state_dict({**weights, **ema_weights} if ema else weights)
    except RuntimeError as e:
        raise AntError(
            f"checkpoint {ckpt} does not fit the run's model: {e}".splitlines()[0]
        ) from None
    model.to(device).eval()
    schedule = NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)
    part = IntervalPartition.from_dict(meta["partition"])
    return LoadedRun(path, cfg, meta, model, schedule, part, int(state["step"]))


def sample_run(
    run: LoadedRun,
    num: int,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples of the run's model in data space (see `sample_model`), seeded by `seed`."""
    g = torch.Generator().manual_seed(seed)
    return sample_model(run.model, run.cfg, run.meta, run.schedule, num, sampler=sampler,
                        steps=steps, guidance=guidance, labels=labels, generator=g)  # fmt: skip


def sample_model(
    model: torch.nn.Module,
    cfg: TrainConfig,
    meta: dict[str, Any],
    schedule: NoiseSchedule,
    num: int,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    guidance: float = 1.0,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples in data space: images in [-1, 1] (decoded through the VAE for latents) or points."""
    from antdiff.sampling import generate

    x = generate(model, schedule, num, tuple(meta["shape"]), sampler=sampler, steps=steps,
                 guidance=guidance, labels=labels, generator=generator,
                 prediction=cfg.prediction, clip_sample=meta["kind"] == "image")  # fmt: skip
    if meta["kind"] == "latent":
        from antdiff.data import decode_latents

        x = decode_latents(x, meta["vae"])
    return x


def save_samples(x: torch.Tensor, out: str | Path, labels: torch.Tensor | None = None) -> Path:
    """FILE.npz and a picture beside it (FILE.png), or just the picture for a .png path."""
    from antdiff.sampling import save_grid, save_npz

    out = Path(out)
    if out.suffix == ".png":
        return save_grid(x, out)
    npz = save_npz(out.with_suffix(".npz"), x, labels)
    save_grid(x, out.with_suffix(".png"))
    return npz


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    from antdiff.export import export_pipeline

    run = load_run(run_dir)
    return export_pipeline(run.model, run.schedule, out_dir, run.cfg.prediction,
                           clip_sample=run.meta["kind"] == "image",
                           vae=run.meta.get("vae"))  # fmt: skip


def finish_run(run_dir: str | Path) -> None:
    """Samples grid of the final EMA model and the run's report.html."""
    from antdiff.report import write_report

    run = load_run(run_dir)
    cfg = run.cfg
    x = sample_run(run, cfg.num_samples, sampler=cfg.sampler, steps=cfg.sample_steps,
                   guidance=cfg.guidance, seed=cfg.seed)  # fmt: skip
    save_samples(x, run.path / "samples.png")
    write_report(run.path)

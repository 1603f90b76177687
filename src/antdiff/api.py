"""The commands of the command line as library calls: train, sample, evaluate, export, affinity.

`train` is fit -> samples -> report; the others open a finished (or running) run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from antdiff import build, distributed
from antdiff.analysis.affinity import AffinityResult, run_affinity, save_affinity
from antdiff.config import TrainConfig
from antdiff.diffusion.guidance import FULL
from antdiff.errors import AntError
from antdiff.evaluate import Evaluator, generate_data
from antdiff.export import export_pipeline, is_export, sample_exported
from antdiff.models import count_parameters
from antdiff.report import write_experiment_report, write_report
from antdiff.rundir import RUN_FILES, RunDir
from antdiff.sample_files import check_out, save_grid, save_samples
from antdiff.signals import StopSignals
from antdiff.train import Trainer
from antdiff.validation import MAX_SEED

# What a signal during the final samples leaves: the run is complete, only its outputs are not.
_TRAINED = (
    "training is complete and saved; draw samples with antdiff sample --run {0}, "
    "write the report with antdiff evaluate --run {0}"
)


def train(cfg: TrainConfig, resume: bool = False) -> RunDir:
    """Train (or resume) a run; then, on rank 0, draw samples and write the report."""
    try:
        with Trainer.start(cfg, resume=resume) as trainer:
            run, parts = trainer.run, trainer.parts
            if trainer.dist.main:
                size = count_parameters(trainer.model) / 1e6
                print(
                    f"{run.info.model} ({size:.2f}M parameters) on {cfg.dataset}, "
                    f"{parts.partition.k} tasks, {cfg.method}",
                    flush=True,
                )
                if cfg.eval_every:
                    trainer.evaluator = Evaluator(
                        cfg,
                        run.info,
                        parts.schedule,
                        num=cfg.eval_num,
                        sampler=cfg.sampler,
                        steps=cfg.sample_steps,
                        guidance=cfg.guidance,
                        seed=cfg.seed,
                    )
            trainer.fit()
            if trainer.dist.main:
                with StopSignals(at_once=_TRAINED.format(run.path)):
                    with trainer.ema_weights() as model:
                        x = generate_data(
                            model,
                            cfg,
                            run.info,
                            parts.schedule,
                            cfg.num_samples,
                            sampler=cfg.sampler,
                            steps=cfg.sample_steps,
                            guidance=cfg.guidance,
                            generator=_generator(cfg.seed),
                        )
                    save_grid(x, run.samples_png)
                    write_report(run)
    finally:
        distributed.teardown()
    return run


def sample(
    run_dir: str | Path,
    num: int,
    out: str | Path,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = FULL,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """`num` samples of the run's EMA model, or of an `antdiff export` directory, written to
    `out` (.npz + .png, or .png); guidance only on the noise levels of `guidance_interval`."""
    if num < 1:
        raise AntError(f"--num must be >= 1, got {num}")
    _check_seed(seed)
    check_out(out)
    if is_export(run_dir):
        x = sample_exported(
            run_dir,
            num,
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            guidance_interval=guidance_interval,
            generator=_generator(seed),
            device=str(distributed.resolve_device(device)),
        )
        return save_samples(x, out)
    run = RunDir.open(run_dir)
    model = build.trained_model(run, device=str(distributed.resolve_device(device)))
    x = generate_data(
        model,
        run.cfg,
        run.info,
        build.schedule(run.cfg),
        num,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        generator=_generator(seed),
        guidance_interval=guidance_interval,
    )
    return save_samples(x, out)


def evaluate(run_dir: str | Path, device: str = "cpu", **settings: Any) -> dict[str, Any]:
    """Evaluate the run's latest EMA model (settings: see `Evaluator`); the result goes into
    the run's metrics.json and report."""
    _check_seed(settings.get("seed", 0))
    run = RunDir.open(run_dir)
    ckpt = run.load_checkpoint()  # once: a running training may write a newer one meanwhile
    model = build.trained_model(run, ckpt, device=str(distributed.resolve_device(device)))
    evaluator = Evaluator(run.cfg, run.info, build.schedule(run.cfg), **settings)
    result = {"step": ckpt.step, **evaluator(model)}
    run.write_evaluation(result)
    write_report(run)
    return result


def fid(a: str, b: str, device: str = "cpu") -> float:
    """The standard Inception FID between two image folders, .npz files or data sets."""
    from antdiff.metrics.inception_fid import inception_fid

    return inception_fid(a, b, device=str(distributed.resolve_device(device)))


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The run's EMA model as a diffusers directory (see antdiff.export)."""
    run = RunDir.open(run_dir)
    found = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if found:
        raise AntError(f"--out {out_dir} holds a training run ({found[0]}); export elsewhere")
    return export_pipeline(
        build.trained_model(run),
        build.schedule(run.cfg),
        out_dir,
        run.cfg.prediction,
        clip_sample=run.info.kind == "image",
        vae=run.info.vae,
        shape=run.info.shape,
    )


def affinity(run_dir: str | Path, out: str | Path | None = None, **settings: Any) -> tuple:
    """Task affinity of the run (settings: see `run_affinity`), saved to `out` (default:
    RUN/affinity, shown in the run's report); returns (result, .npz path, report path)."""
    _check_seed(settings.get("seed", 0))
    result: AffinityResult = run_affinity(run_dir, **settings)
    if out is None:
        run = RunDir.open(run_dir)
        npz = save_affinity(result, run.affinity_dir)
        return result, npz, write_report(run)
    npz = save_affinity(result, out)
    return result, npz, write_experiment_report(out)


def _check_seed(seed: int) -> None:
    """A seed torch's generators take (one line, not torch's overflow error)."""
    if not 0 <= seed <= MAX_SEED:
        raise AntError(f"--seed must be in 0..2**64 - 1, got {seed}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

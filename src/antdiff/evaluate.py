"""Evaluate a run's EMA model: sample quality and the per-interval held-out denoising loss.

Images: Frechet distance `fd` on the features of a classifier the project trains itself (digits,
or any labelled grey data set such as MNIST), precision/recall and classifier statistics; the
reference set is ALL real images of the data set (with 128-d features, 1,797 real digits give a
steadier FD than the 300 held-out ones), and `fd_halves` / `fd_noise` beside it are the floor and
the ceiling. Points: sliced Wasserstein, MMD and, for gaussians8, the true log-likelihood.
Held-out loss: the model's loss on fixed (image, t, noise) triples from images never trained on,
per interval of the run's partition: paired across models, far less noisy than any sample metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from antdiff.config import TrainConfig
from antdiff.data import Dataset, load_dataset
from antdiff.diffusion import per_sample_loss
from antdiff.errors import AntError
from antdiff.metrics import evaluate_samples, fd_reference, get_feature_net, heldout_loss
from antdiff.schedule import NoiseSchedule
from antdiff.tasks import IntervalPartition


def feature_net_for(data: Dataset):
    """The classifier whose features define FD for this data set (trained once, cached)."""
    if data.name == "digits" and data.x.shape[-1] == 8:
        return get_feature_net("digits")
    x = data.x
    if data.labels is None or x.shape[1] != 1 or x.shape[-1] != x.shape[-2]:
        raise AntError(
            f"FD needs a feature net; {data.name} is not labelled grey square images (use the "
            "optional standard FID on image folders: antdiff.metrics.fid)"
        )
    return get_feature_net(data.name.split(":")[0], images=x, labels=data.labels)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    cfg: TrainConfig,
    meta: dict[str, Any],
    schedule: NoiseSchedule,
    partition: IntervalPartition,
    *,
    num: int = 500,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    per_interval: int = 128,
) -> dict[str, Any]:
    """All metrics of one model (its EMA weights, in eval mode) as a JSON-friendly dict."""
    from antdiff.run import sample_model
    from antdiff.train import load_data

    device = next(model.parameters()).device
    full = load_dataset(cfg.dataset, cfg.resolution)  # pixels/points (latents get decoded)
    _, heldout = load_data(cfg)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % meta["num_classes"] if meta["num_classes"] else None
    x = sample_model(model, cfg, meta, schedule, num, sampler=sampler, steps=steps,
                     guidance=guidance, labels=labels, generator=g)  # fmt: skip
    out: dict[str, Any] = {"sampler": sampler, "sample_steps": steps, "guidance": guidance,
                           "seed": seed}  # fmt: skip
    if meta["kind"] == "points":  # reference: a seeded subset of at most 5,000 true points
        mixture = full.meta if "means" in full.meta else None
        real = full.x[torch.randperm(len(full.x), generator=g)[:5000]]
        out.update(evaluate_samples(x, real, kind="points", mixture=mixture, seed=seed))
    else:
        net = feature_net_for(full)
        out.update(evaluate_samples(x.clamp(-1, 1), full.x, kind="image", labels=labels,
                                    feature_net=net, seed=seed))  # fmt: skip
        out.update(fd_reference(full.x, feature_net=net, seed=seed))
    if heldout is not None:
        alphas = schedule.alphas_cumprod.float().to(device)

        def loss_fn(
            x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None
        ) -> torch.Tensor:
            return per_sample_loss(model, x0, t, noise, alphas, prediction=cfg.prediction, y=y)

        # class-conditional: the loss given each image's true label (the model's main task)
        labels = heldout.labels if meta["num_classes"] else None
        intervals = [list(iv) for iv in partition.intervals]
        out["heldout"] = heldout_loss(loss_fn, heldout.x, intervals, seed=seed, labels=labels,
                                      n_per_interval=per_interval, device=device)  # fmt: skip
    return _clean(out)


def evaluate_run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Evaluate the run's latest EMA model and write `metrics.json` into the run directory."""
    from antdiff.run import load_run

    run = load_run(run_dir)
    result = {"step": run.step, **evaluate_model(run.model, run.cfg, run.meta, run.schedule,
                                                 run.partition, **kwargs)}  # fmt: skip
    (run.path / "metrics.json").write_text(json.dumps(result, indent=1))
    from antdiff.report import write_report

    write_report(run.path)  # the report shows the new numbers
    return result


def _clean(value: Any) -> Any:
    """JSON-friendly: NaN -> None, tensors -> floats."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

"""Evaluate a model of a run: sample quality and the per-interval held-out denoising loss.

Images: Frechet distance `fd` on the features of a classifier the project trains itself (digits,
or any labelled grey data set such as MNIST), precision/recall and classifier statistics; the
reference set is ALL real images of the data set (with 128-d features, 1,797 real digits give a
steadier FD than the 300 held-out ones), and `fd_halves` / `fd_noise` beside it are the floor and
the ceiling. Points: sliced Wasserstein, MMD and, for gaussians8, the true log-likelihood.
Held-out loss: the model's loss on fixed (image, t, noise) triples from images never trained on,
per interval of the run's partition: paired across models, far less noisy than any sample metric.
Optionally the standard Inception FID (Heusel et al. 2017) with the TF-FID Inception-v3 carried
by the extra ant-diffusion[fid] (metrics/inception_fid.py), against the cached statistics of all
real images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from antdiff import build
from antdiff.config import TrainConfig
from antdiff.data import Dataset, decode_latents
from antdiff.diffusion import Schedule, generate, per_sample_loss
from antdiff.diffusion.guidance import FULL, check_guidance_interval
from antdiff.diffusion.samplers import check_sampler, default_sampler
from antdiff.distributed import resolve_device
from antdiff.errors import AntError
from antdiff.metrics import (
    FeatureNet,
    draw_heldout_triples,
    evaluate_heldout,
    evaluate_samples,
    fd_reference,
    get_feature_net,
)
from antdiff.metrics.inception import Inception
from antdiff.metrics.inception_fid import fid_from_stats, image_stats, reference_stats
from antdiff.runinfo import RunInfo
from antdiff.tasks import IntervalPartition


def feature_net_for(data: Dataset) -> FeatureNet:
    """The classifier whose features define FD for this data set (trained once, cached)."""
    if data.name == "digits" and data.x.shape[-1] == 8:
        return get_feature_net("digits")
    x = data.x
    if data.labels is None or x.shape[1] != 1 or x.shape[-1] != x.shape[-2]:
        raise AntError(
            f"FD needs a feature net; {data.name} is not labelled grey square images (use the "
            "standard FID instead: antdiff evaluate --fid)"
        )
    return get_feature_net(data.name.split(":")[0], images=x, labels=data.labels)


@torch.no_grad()
def generate_data(
    model: nn.Module,
    cfg: TrainConfig,
    info: RunInfo,
    schedule: Schedule,
    num: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    guidance_interval: tuple[float, float] = FULL,
) -> Tensor:
    """Samples in data space: images in [-1, 1] (decoded through the VAE for latents) or points."""
    x = generate(
        model,
        schedule,
        num,
        info.shape,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        labels=labels,
        generator=generator,
        prediction=cfg.prediction,
        clip_sample=info.kind == "image",
        guidance_interval=guidance_interval,
    )
    if info.kind == "latent":
        assert info.vae is not None
        x = decode_latents(x, info.vae)
    if not bool(torch.isfinite(x).all()):
        raise AntError("the model's samples are not finite (NaN or inf): its weights diverged")
    return x


class Evaluator:
    """All metrics of a model of one run, as a JSON-friendly dict: call it on a model (its EMA
    weights, in eval mode). The real data, feature net, FD floor and held-out triples are
    prepared once, so evaluating during training costs only the sampling and the features."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: RunInfo,
        schedule: Schedule,
        *,
        num: int = 500,
        sampler: str | None = None,
        steps: int = 50,
        guidance: float = 1.0,
        guidance_interval: tuple[float, float] = FULL,
        seed: int = 0,
        per_interval: int = 128,
        partition: IntervalPartition | None = None,
        fid: bool = False,
    ) -> None:
        if num < 2:
            raise AntError(f"the number of samples must be >= 2, got {num}")
        self.cfg, self.info, self.schedule = cfg, info, schedule
        sampler = check_sampler(schedule, sampler or default_sampler(schedule))
        self.num, self.sampler, self.steps, self.guidance = num, sampler, steps, guidance
        self.guidance_interval = check_guidance_interval(guidance_interval)
        self.seed = seed
        if fid and info.kind == "points":
            raise AntError("the standard FID needs images, not points")
        device = resolve_device(cfg.device)  # the run's device (a GPU computes FID in seconds)
        self.inception = Inception(device) if fid else None  # fail now, not after sampling
        self.real = build.reference_data(cfg)
        self.net = None if info.kind == "points" else feature_net_for(self.real)
        self.reference = (
            {} if self.net is None else fd_reference(self.real.x, feature_net=self.net, seed=seed)
        )
        _, heldout = build.load_data(cfg)
        self.triples = None
        if heldout is not None:
            # class-conditional: the loss given each image's true label (the model's main task)
            labels = heldout.labels if info.num_classes else None
            intervals = (partition or info.partition).intervals
            self.triples = draw_heldout_triples(
                heldout.x, intervals, n_per_interval=per_interval, seed=seed, labels=labels
            )

    def labels(self) -> Tensor | None:
        """The class of each sample of a conditional model: 0, 1, ..., K-1, 0, ..."""
        return torch.arange(self.num) % self.info.num_classes if self.info.num_classes else None

    def sample(self, model: nn.Module) -> tuple[Tensor, Tensor | None, torch.Generator]:
        """`num` samples in data space from the evaluation seed: (x, labels, the generator)."""
        g = torch.Generator().manual_seed(self.seed)
        labels = self.labels()
        x = generate_data(
            model,
            self.cfg,
            self.info,
            self.schedule,
            self.num,
            sampler=self.sampler,
            steps=self.steps,
            guidance=self.guidance,
            labels=labels,
            generator=g,
            guidance_interval=self.guidance_interval,
        )
        return x, labels, g

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, Any]:
        x, labels, g = self.sample(model)
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "sample_steps": self.steps,
            "guidance": self.guidance,
            "guidance_interval": list(self.guidance_interval),
            "seed": self.seed,
        }
        out.update(self.sample_quality(x, labels, g))
        if self.inception is not None:
            out["fid"] = standard_fid(x, self.real.x, self.real.name, self.inception)
        if self.triples is not None:
            out["heldout"] = evaluate_heldout(
                self.loss_fn(model), self.triples, device=_device(model)
            )
        return _clean(out)

    def sample_quality(self, x: Tensor, labels: Tensor | None, g: torch.Generator) -> dict:
        """Sample metrics of `x` against the real data; `g` continues the sampling generator."""
        if self.net is None:  # points: a seeded subset of at most 5,000 true points
            real = self.real.x[torch.randperm(len(self.real.x), generator=g)[:5000]]
            mixture = self.real.meta if "means" in self.real.meta else None
            return evaluate_samples(x, real, kind="points", mixture=mixture, seed=self.seed)
        out = evaluate_samples(
            x.clamp(-1, 1),
            self.real.x,
            kind="image",
            labels=labels,
            feature_net=self.net,
            seed=self.seed,
        )
        return {**out, **self.reference}

    def loss_fn(self, model: nn.Module):
        """(x0, t, noise[, y]) -> the model's per-sample unweighted loss [B]."""
        path = self.schedule.loss_path(_device(model))

        def fn(x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None = None) -> Tensor:
            return per_sample_loss(model, x0, t, noise, path, prediction=self.cfg.prediction, y=y)

        return fn


def standard_fid(samples: Tensor, real: Tensor, name: str, net: Inception | None = None) -> float:
    """Inception FID of image samples against the real images (whose statistics are cached)."""
    if samples.ndim != 4:
        raise AntError("the standard FID needs images, not points")
    net = net or Inception()
    return fid_from_stats(image_stats(samples, net), reference_stats(real, name, net))


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


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

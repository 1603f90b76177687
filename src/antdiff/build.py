"""A run's components, built from its config: data, noise schedule, interval tasks, timestep
sampler, model, multi-task method and fixed loss weighting. Nothing here writes a file.

`components(cfg)` builds everything the training loop needs; the smaller builders serve
sampling, evaluation and the analyses, so that each component is made in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from antdiff.affinity.auto import AutoClusters, AutoSettings
from antdiff.config import VANILLA, TrainConfig
from antdiff.data import Dataset, load_dataset
from antdiff.diffusion import FlowPath, NoiseSchedule, Schedule, Weighting, sample_weighting
from antdiff.errors import AntError
from antdiff.models import Denoiser, build_model
from antdiff.mtl import MTLMethod, build_method
from antdiff.resume import check_checkpoint
from antdiff.rundir import Checkpoint, RunDir
from antdiff.runinfo import RunInfo
from antdiff.tasks import (
    Clustering,
    ClusterSpec,
    IntervalPartition,
    RangeSampler,
    TimestepSampler,
    build_timestep_sampler,
    cluster_timesteps,
    clustering_from_spec,
    timestep_sampling,
)
from antdiff.validation import affinity_warmup, timestep_range


def load_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """(training set, held-out set or None); the held-out split never depends on the run seed."""
    data = load_dataset(cfg.dataset, cfg.resolution, cfg.vae)
    if cfg.conditional and data.labels is None:
        raise AntError(f"--conditional needs labels, and {data.name} has none")
    if cfg.heldout_size:
        return data.split(cfg.heldout_size, seed=0)
    return data, None


def reference_data(cfg: TrainConfig) -> Dataset:
    """All real samples in data space (pixels or points, never latents): what samples are
    compared with."""
    return load_dataset(cfg.dataset, cfg.resolution)


def schedule(cfg: TrainConfig) -> Schedule:
    """The DDPM noise schedule, or flow matching's path (`--objective flow`)."""
    return make_schedule(cfg.objective, cfg.schedule, cfg.timesteps, cfg.flow_shift)


def make_schedule(objective: str, name: str, timesteps: int, flow_shift: float) -> Schedule:
    """The schedule of these settings alone (what `antdiff cluster` needs of a config)."""
    if objective == "flow":
        return FlowPath(timesteps, flow_shift)
    return NoiseSchedule.from_name(name, timesteps)


def clustering(cfg: TrainConfig, schedule: Schedule) -> Clustering:
    """The interval tasks of `--clusters`, by the exact DP on the run's schedule; for
    affinity:K:auto the K provisional equal intervals of its warm-up (antdiff.affinity.auto)."""
    spec = ClusterSpec.parse(cfg.clusters)
    if spec.auto:
        return cluster_timesteps("timestep", spec.k, schedule)
    return clustering_from_spec(cfg.clusters, schedule)


def affinity_measurement(cfg: TrainConfig, data: Dataset, schedule: Schedule) -> AutoClusters:
    """The online affinity measurement of an affinity:K:auto run, set up from its config."""
    settings = AutoSettings(
        k=ClusterSpec.parse(cfg.clusters).k,
        warmup=affinity_warmup(cfg),
        snapshots=cfg.affinity_snapshots,
        bins=cfg.affinity_bins,
        probe=cfg.affinity_probe,
        steps=cfg.steps,
        timesteps=cfg.timesteps,
        prediction=cfg.prediction,
        micro_batch=cfg.batch_size,
        conditional=cfg.conditional,
        seed=cfg.seed,
    )
    return AutoClusters(settings, data, schedule)


def auto_model(data: Dataset) -> str:
    if data.kind == "points":
        return "mlp"
    return "unet-tiny" if data.size <= 16 else "unet-small"


def run_info(cfg: TrainConfig, data: Dataset, tasks: Clustering) -> RunInfo:
    """The run record: what sampling and export need to rebuild the model without the data."""
    return RunInfo(
        kind=data.kind,
        shape=data.sample_shape,
        num_classes=data.num_classes if cfg.conditional else 0,
        model=auto_model(data) if cfg.model == "auto" else cfg.model,
        vae=data.vae,
        num_train=len(data),
        partition=tasks.partition,
        clustering_cost=tasks.cost,
        warming_up=ClusterSpec.parse(cfg.clusters).auto,
    )


def timestep_sampler(cfg: TrainConfig, partition: IntervalPartition) -> TimestepSampler:
    """`--timestep-sampling` over the tasks, or only `--timestep-range` (a specialist)."""
    bounds = timestep_range(cfg.timestep_range, cfg.timesteps)
    if bounds is not None:
        return RangeSampler(bounds, partition)
    sampler, _ = timestep_sampling(cfg.timestep_sampling)
    if cfg.batch_size < partition.k and sampler.stratified:
        raise AntError(
            f"batch size {cfg.batch_size} is smaller than the number of tasks K="
            f"{partition.k}: {sampler.name} sampling needs at least one sample per task"
        )
    return build_timestep_sampler(cfg.timestep_sampling, partition)


def model(cfg: TrainConfig, info: RunInfo) -> Denoiser:
    """The untrained model, initialised from the run's seed (identical on every rank)."""
    torch.manual_seed(cfg.seed)
    return build_model(
        info.model,
        channels=info.shape[0],
        size=info.size,
        num_classes=info.num_classes,
        **cfg.model_options,
    )


def trained_model(
    run: RunDir, ckpt: Checkpoint | None = None, ema: bool = True, device: str = "cpu"
) -> Denoiser:
    """The run's model with the EMA (default) or raw weights of `ckpt` (default: the latest),
    in eval mode."""
    ckpt = ckpt or run.load_checkpoint()
    check_checkpoint(run, ckpt)
    net = model(run.cfg, run.info)
    try:
        net.load_state_dict({**ckpt.weights, **ckpt.ema} if ema else ckpt.weights)
    except RuntimeError as e:
        raise AntError(
            f"checkpoint {ckpt.path} does not fit the run's model: {e}".splitlines()[0]
        ) from None
    return net.to(device).eval()


def tasks(
    cfg: TrainConfig, info: RunInfo, schedule: Schedule
) -> tuple[TimestepSampler, MTLMethod, Weighting]:
    """What trains over the run's tasks: the timestep sampler, the MTL method and the per-sample
    loss weighting (`--weighting`); vanilla's while an affinity:K:auto run warms up."""
    if info.warming_up:
        cfg = replace(cfg, **VANILLA, method_options={})
    weighting = sample_weighting(cfg.weighting, cfg.prediction, schedule)
    method = build_method(cfg.method, info.partition.k, **cfg.method_options)
    return timestep_sampler(cfg, info.partition), method, weighting


@dataclass
class Components:
    """What the training loop is made of; `components(cfg)` builds them."""

    data: Dataset
    heldout: Dataset | None
    info: RunInfo
    schedule: Schedule
    timestep_sampler: TimestepSampler
    model: Denoiser
    method: MTLMethod
    weighting: Weighting
    auto: AutoClusters | None = None  # affinity:K:auto while it warms up

    @property
    def partition(self) -> IntervalPartition:
        return self.info.partition


def components(cfg: TrainConfig, info: RunInfo | None = None) -> Components:
    """Everything a run trains with; `info` (a resumed run's record) fixes the tasks it chose."""
    data, heldout = load_data(cfg)
    return _components(cfg, data, heldout, schedule(cfg), info)


def _components(
    cfg: TrainConfig,
    data: Dataset,
    heldout: Dataset | None,
    schedule: Schedule,
    info: RunInfo | None,
) -> Components:
    info = info or run_info(cfg, data, clustering(cfg, schedule))
    net = model(cfg, info)
    timestep_sampler, method, weighting = tasks(cfg, info, schedule)
    auto = affinity_measurement(cfg, data, schedule) if info.warming_up else None
    return Components(data, heldout, info, schedule, timestep_sampler, net, method, weighting, auto)

"""The checks of a training config: types, ranges and names, all before a run directory exists.

They read a `TrainConfig` (config.py, the layer above, which calls them from `make_config`) by
its field names only, so that this module sits below the config and imports nothing of it.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from antdiff.data import check_spec
from antdiff.diffusion.loss import PREDICTIONS, VELOCITY
from antdiff.diffusion.samplers import DDPM_SAMPLERS, FLOW_SAMPLERS
from antdiff.diffusion.schedule import SCHEDULES
from antdiff.diffusion.weighting import build_weighting
from antdiff.distributed import check_device_name
from antdiff.errors import AntError
from antdiff.models import list_models
from antdiff.mtl import ANCHORED_PREFIX, METHODS, SAMPLED_PREFIX, TORCHJD_PREFIX, build_method
from antdiff.options import Param
from antdiff.tasks import (
    ClusterSpec,
    IntervalPartition,
    build_timestep_sampler,
    check_size,
    load_affinity,
    timestep_sampling,
)

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEED = 2**64 - 1  # torch.manual_seed's largest
#: SD3's shift of flow matching's t; far outside this range the sampler's sigmas collapse
FLOW_SHIFT = Param("flow_shift", float, 1.0, 0.01, 100.0)
OBJECTIVES = ("ddpm", "flow")

#: a config.TrainConfig; read by field name only (this module sits below config.py)
Config = Any


def check_type(name: str, hint: Any, value: Any) -> Any:
    """`value` as the type `hint` of the field `name` (an int where a float is wanted is fine);
    else AntError."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        base = typing.get_origin(kind) or kind
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool, dict) and type(value) is base:
            return value
    want = " or ".join(
        "null" if k is type(None) else (typing.get_origin(k) or k).__name__ for k in allowed
    )
    flag = name.replace("_", "-")
    raise AntError(f"{flag} must be {want}, got {value!r} ({type(value).__name__})")


def validate(cfg: Config, shorthands: Iterable[str] = ()) -> None:
    """Ranges and names of the config `cfg`; `shorthands` are the other `--method` names
    (vanilla, min-snr, ...) that an error lists."""
    _check_ranges(cfg)
    flow = cfg.objective == "flow"
    for name, value, names in (
        ("objective", cfg.objective, OBJECTIVES),
        ("schedule", cfg.schedule, SCHEDULES),
        ("prediction", cfg.prediction, (VELOCITY,) if flow else tuple(PREDICTIONS)),
        ("sampler", cfg.sampler, FLOW_SAMPLERS if flow else DDPM_SAMPLERS),
        ("precision", cfg.precision, PRECISIONS),
    ):
        if value not in names:
            kind = f" for --objective {cfg.objective}" if name in ("prediction", "sampler") else ""
            raise AntError(f"unknown {name} {value!r}{kind}; choose from {', '.join(names)}")
    check_schedule(cfg.objective, cfg.schedule, cfg.timesteps, cfg.flow_shift)
    build_timestep_sampler(cfg.timestep_sampling, IntervalPartition.uniform(cfg.timesteps, 1))
    spec = ClusterSpec.parse(cfg.clusters)
    if spec.k > cfg.timesteps:
        raise AntError(f"--clusters {cfg.clusters}: K must be <= timesteps ({cfg.timesteps})")
    if spec.file is not None and not spec.auto and not Path(spec.file).is_file():
        raise AntError(f"affinity file not found: {spec.file}")
    if spec.auto:
        check_auto(cfg, spec.k)
    _check_method(cfg, spec.k, shorthands)
    timestep_range(cfg.timestep_range, cfg.timesteps)
    _check_tasks(cfg, spec)
    check_device_name(cfg.device)
    if not cfg.out.strip():
        raise AntError("--out is empty; name the run directory")
    check_spec(cfg.dataset)
    if cfg.vae is not None and not cfg.vae.strip():
        raise AntError("--vae is empty; name an AutoencoderKL (or leave it out)")
    if cfg.model != "auto" and cfg.model not in list_models():
        raise AntError(f"unknown model {cfg.model!r}; choose from auto, {', '.join(list_models())}")


def _check_tasks(cfg: Config, spec: ClusterSpec) -> None:
    """What the K tasks need, known before training: also what an affinity:K:auto run meets only
    at its switch after the warm-up, so that such a run is refused before it starts."""
    if spec.file is not None and not spec.auto and Path(spec.file).is_file():
        bins = load_affinity(spec.file).shape[0]
        if spec.k > bins:
            raise AntError(
                f"--clusters {cfg.clusters}: K must be <= the matrix's {bins} bins "
                "(more intervals than bins would split single timesteps off)"
            )
    if cfg.affinity_bins < 2 or cfg.affinity_probe < 1 or cfg.affinity_snapshots < 1:
        raise AntError("affinity_bins must be >= 2, affinity_probe and affinity_snapshots >= 1")
    if not spec.auto and cfg.affinity_warmup is not None:
        raise AntError("--affinity-warmup is the warm-up of --clusters affinity:K:auto only")
    if cfg.timestep_range is not None:
        return
    if cfg.timestep_sampling == "stratified" and cfg.batch_size < spec.k:
        raise AntError(
            f"batch size {cfg.batch_size} is smaller than the number of tasks K={spec.k}: "
            "stratified sampling needs at least one sample per task"
        )
    build_timestep_sampler(cfg.timestep_sampling, IntervalPartition.uniform(cfg.timesteps, spec.k))


def check_schedule(objective: str, schedule: str, timesteps: int, flow_shift: float) -> None:
    """The noise schedule (DDPM) or path (flow) alone: what `antdiff cluster` needs."""
    if objective not in OBJECTIVES:
        raise AntError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if schedule not in SCHEDULES:
        raise AntError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if objective == "flow" and schedule != "linear":
        raise AntError("--schedule is DDPM's noise schedule; flow matching's is --flow-shift")
    FLOW_SHIFT.check("flow matching", flow_shift)
    if objective != "flow" and flow_shift != 1.0:
        raise AntError("--flow-shift shifts flow matching's t: use it with --objective flow")
    if timesteps < 1:
        raise AntError(f"timesteps must be >= 1, got {timesteps}")
    check_size(timesteps)


def _check_ranges(cfg: Config) -> None:
    finite = all(math.isfinite(v) for v in (cfg.lr, cfg.weight_decay, cfg.label_dropout))
    checks = [
        (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (finite, "lr, weight_decay and label_dropout must be finite numbers"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}"),
        (0 <= cfg.label_dropout < 1, f"label_dropout must be in [0, 1), got {cfg.label_dropout}"),
        (cfg.timesteps >= 1, f"timesteps must be >= 1, got {cfg.timesteps}"),
        (cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}"),
        (cfg.seed <= MAX_SEED, f"seed must be at most 2**64 - 1, got {cfg.seed}"),
        (cfg.log_every >= 1 and cfg.checkpoint_every >= 1, "log/checkpoint intervals must be >= 1"),
        (cfg.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (cfg.holdout is None or cfg.holdout >= 0, f"holdout must be >= 0, got {cfg.holdout}"),
        (cfg.eval_every >= 0 and cfg.eval_num >= 2, "eval_every must be >= 0, eval_num >= 2"),
        (cfg.num_samples >= 1, f"num_samples must be >= 1, got {cfg.num_samples}"),
        (cfg.sample_steps >= 1, f"sample_steps must be >= 1, got {cfg.sample_steps}"),
        (
            cfg.sample_steps <= cfg.timesteps,
            f"sample_steps ({cfg.sample_steps}) must be <= timesteps ({cfg.timesteps})",
        ),
        (math.isfinite(cfg.guidance), "guidance must be a finite number"),
        (cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip must be > 0 (or unset)"),
        (cfg.resolution is None or cfg.resolution >= 1, "resolution must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise AntError(message)


def _check_method(cfg: Config, k: int, shorthands: Iterable[str]) -> None:
    """The MTL method exists and trains with the timestep sampling and the weighting."""
    prefixed = cfg.method.startswith((TORCHJD_PREFIX, SAMPLED_PREFIX, ANCHORED_PREFIX))
    if cfg.method not in METHODS and not prefixed:
        prefixes = (TORCHJD_PREFIX, SAMPLED_PREFIX, ANCHORED_PREFIX)
        names = ", ".join([*shorthands, *METHODS, *(p + "NAME" for p in prefixes)])
        raise AntError(f"unknown method {cfg.method!r}; choose from {names}")
    sampler, _ = timestep_sampling(cfg.timestep_sampling)
    method = build_method(cfg.method, k, **cfg.method_options)
    if method.equal_task_weights and k > 1 and sampler.shapes_density:
        raise AntError(
            f"--method {cfg.method} averages the {k} interval losses, which undoes the weight "
            f"--timestep-sampling {cfg.timestep_sampling} gives the intervals; use --clusters "
            "timestep:1 (one task: the plain mean over the samples)"
        )
    if sampler.follows_method and not method.takes_shares:
        raise AntError(
            f"--timestep-sampling {sampler.name} draws by the method's weights; train with "
            f"--method sampled:{cfg.method} so that the model does not get them twice"
        )
    if method.needs_follow and not sampler.follows_method:
        raise AntError(
            f"--method {cfg.method} trains the model on the plain mean; its weights only drive "
            "--timestep-sampling follow or decrease"
        )
    if sampler.follows_method and not method.needs_follow:
        raise AntError(
            f"--timestep-sampling {sampler.name} pairs with sampled:NAME, not {cfg.method}"
        )
    weighting = build_weighting(cfg.weighting, cfg.prediction)
    if weighting.learned and method.per_task_gradients:  # it would get no combined gradient
        raise AntError(
            f"the {weighting.name} weighting trains with loss-based methods, not {cfg.method}"
        )
    if weighting.learned and cfg.precision == "fp16":  # the scaler unscales the model's only
        raise AntError(f"the {weighting.name} weighting trains in fp32 or bf16, not fp16")


def affinity_warmup(cfg: Config) -> int:
    """Steps of the warm-up of `affinity:K:auto`: the flag, or 2% of the steps. Measured on
    digits 8x8 over 5 seeds (the project's benchmark): 2% gave the steadiest partitions and the
    best FD; 10% and 20% sometimes a late last interval and a much worse FD."""
    if cfg.affinity_warmup is not None:
        return cfg.affinity_warmup
    return max(cfg.affinity_snapshots, round(0.02 * cfg.steps))


def check_auto(cfg: Config, k: int) -> None:
    """The measurement of `affinity:K:auto` fits the run."""
    warmup, b = affinity_warmup(cfg), cfg.affinity_bins
    checks = [
        (2 <= b <= cfg.timesteps, f"affinity_bins must be in 2..{cfg.timesteps}, got {b}"),
        (k <= b, f"affinity:{k}:auto needs K <= affinity_bins ({b}): K intervals of the bins"),
        (cfg.affinity_probe >= 1, f"affinity_probe must be >= 1, got {cfg.affinity_probe}"),
        (cfg.affinity_snapshots >= 1, "affinity_snapshots must be >= 1"),
        (
            cfg.affinity_snapshots <= warmup < cfg.steps,
            f"the affinity warm-up ({warmup} steps) must be shorter than the run ({cfg.steps} "
            f"steps) and at least one step per snapshot ({cfg.affinity_snapshots})",
        ),
        (cfg.timestep_range is None, "affinity:K:auto and timestep_range exclude each other"),
    ]
    for ok, message in checks:
        if not ok:
            raise AntError(message)


def timestep_range(spec: str | None, timesteps: int) -> tuple[int, int] | None:
    """The inclusive [L, R] of `--timestep-range` ("L:R"), validated against T; None when
    unset."""
    if spec is None:
        return None
    try:
        lo, hi = (int(v) for v in spec.split(":"))
    except ValueError:
        raise AntError(f"timestep_range must be L:R, got {spec!r}") from None
    if not 0 <= lo <= hi < timesteps:
        raise AntError(f"timestep_range {lo}:{hi} must satisfy 0 <= L <= R < {timesteps}")
    return lo, hi

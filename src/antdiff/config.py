"""Typed training configuration, named presets and config files (JSON or TOML).

Precedence: defaults < preset < config file < command-line flags. The resolved config is checked
whole (types, ranges, names of methods, costs, samplers) before anything is written; it is saved
as `config.json` in every run directory and is what `--resume`, `sample` and `export` read back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from antdiff.diffusion.loss import PREDICTIONS, VELOCITY
from antdiff.diffusion.samplers import DDPM_SAMPLERS, FLOW_SAMPLERS
from antdiff.diffusion.schedule import SCHEDULES
from antdiff.diffusion.weighting import build_weighting
from antdiff.errors import AntError
from antdiff.mtl import METHODS, TORCHJD_PREFIX, GramianMethod, build_method
from antdiff.tasks import ClusterSpec, IntervalPartition, build_timestep_sampler, check_size

PRECISIONS = ("fp32", "bf16", "fp16")
OBJECTIVES = ("ddpm", "flow")


@dataclass
class TrainConfig:
    """Everything that determines a run; HELP says what each field means."""

    # data and model
    dataset: str = "digits"
    resolution: int | None = None
    vae: str | None = None
    holdout: int | None = None
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False
    label_dropout: float = 0.1
    # diffusion
    objective: str = "ddpm"
    schedule: str = "linear"
    flow_shift: float = 1.0
    timesteps: int = 1000
    prediction: str = "epsilon"
    # ANT: tasks and the multi-task method
    clusters: str = "timestep:5"
    timestep_sampling: str = "stratified"
    timestep_range: str | None = None
    method: str = "uw"
    method_options: dict[str, Any] = field(default_factory=dict)
    weighting: str = "constant"
    affinity_warmup: int | None = None
    affinity_bins: int = 20
    affinity_probe: int = 32
    affinity_snapshots: int = 3
    # optimisation
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.999
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    # outputs
    out: str = "runs/run"
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_samples: int = 64
    sampler: str = "ddim"
    sample_steps: int = 50
    guidance: float = 1.0
    eval_every: int = 0
    eval_num: int = 500

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def heldout_size(self) -> int:
        if self.holdout is not None:
            return self.holdout
        return {"digits": 300, "animals": 1000}.get(self.dataset, 0)


HELP = {
    "dataset": "digits | animals | toy:NAME | folder:PATH | npz:PATH | mnist:DIR (IDX files)",
    "resolution": "resize images to this side length",
    "vae": "a diffusers AutoencoderKL folder: train in its latent space (LDM)",
    "holdout": "samples kept out of training (held-out loss); digits 300, animals 1000, else 0",
    "model": "auto (by data shape), unet-tiny, unet-small, unet-base, dit-tiny, dit-s, mlp",
    "model_options": "JSON object overriding the model's diffusers config",
    "conditional": "class-conditional (needs labels); classifier-free guidance at sampling",
    "label_dropout": "probability of the null label while training (classifier-free guidance)",
    "objective": "ddpm (noise prediction, DDPM forward process) | flow (flow matching: "
    "x_t = (1 - t) x0 + t eps, velocity target; sampler euler, prediction velocity)",
    "schedule": "DDPM noise schedule: linear | cosine | scaled-linear",
    "flow_shift": "flow matching: SD3's shift of t, sigma = s t / (1 + (s - 1) t) (1: none)",
    "timesteps": "number of diffusion timesteps T (flow matching: bins of t for the tasks)",
    "prediction": "what the network predicts: epsilon | v | sample (DDPM), velocity (flow)",
    "clusters": "the interval tasks, COST:K: timestep:K | snr:K | log-snr:K | affinity:K:FILE | "
    "affinity:K:auto (measured during a warm-up)",
    "timestep_sampling": "stratified (B/K per interval, the paper) | uniform | "
    "logit-normal[:m,s] | mode[:scale] | loss-aware[:history]",
    "timestep_range": "L:R: train on t in [L, R] only (a specialist, for O2)",
    "method": "uw | pcgrad | nash | famo | mean | torchjd:NAME; baselines vanilla | min-snr | p2 "
    "| debiased | edm2",
    "method_options": "JSON object of the method's options, e.g. '{\"lr\": 0.025}' for uw",
    "weighting": "fixed loss weighting: constant | min-snr[:gamma] | p2[:gamma=,k=] | soft-min-snr "
    "| debiased | sigma-sqrt, cosmap (flow)",
    "affinity_warmup": "affinity:K:auto: vanilla steps before the tasks are chosen (2%% of steps)",
    "affinity_bins": "affinity:K:auto: equal timestep bins of the affinity measurement",
    "affinity_probe": "affinity:K:auto: fixed training samples whose gradients are measured",
    "affinity_snapshots": "affinity:K:auto: measurements spread over the warm-up, averaged",
    "steps": "training steps",
    "batch_size": "the GLOBAL batch, split across processes",
    "lr": "AdamW learning rate of the model",
    "weight_decay": "AdamW weight decay of the model",
    "grad_clip": "clip the gradient norm (default: the method's, Nash-MTL 1.0; else none)",
    "ema_decay": "decay of the EMA weights that sampling uses",
    "precision": "fp32 | bf16 | fp16 (bf16 and fp16 need a GPU)",
    "seed": "seed of the weights, the batches and the samples",
    "device": "auto | cpu | cuda | cuda:N",
    "out": "the run directory",
    "log_every": "write a metrics.jsonl row every N steps",
    "checkpoint_every": "save a checkpoint every N steps",
    "keep_checkpoints": "checkpoints kept on disk (the newest)",
    "num_samples": "samples drawn at the end of training (samples.png)",
    "sampler": "sampler: ddpm | ddim | dpm++ (DDPM), euler | heun (flow)",
    "sample_steps": "sampling steps",
    "guidance": "classifier-free guidance scale of the samples",
    "eval_every": "evaluate the EMA model every N steps into metrics.jsonl (0: never)",
    "eval_num": "samples per evaluation",
}

# Named starting points; any flag overrides them.
CPU28: dict[str, Any] = {
    "model": "unet-small",
    "conditional": True,
    "holdout": 1000,
    "steps": 2500,
    "batch_size": 32,
    "lr": 1e-3,
    "checkpoint_every": 500,
    "num_samples": 100,
}
GPU28: dict[str, Any] = {
    **CPU28,
    "model": "unet-base",
    "steps": 30000,
    "batch_size": 128,
    "lr": 2e-4,
    "checkpoint_every": 5000,
    "eval_num": 2000,
}
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "dataset": "digits",
        "method": "uw",
        "clusters": "affinity:5:auto",
        "steps": 3000,
        "batch_size": 64,
        "lr": 2e-3,
        "ema_decay": 0.999,
        "checkpoint_every": 500,
        "log_every": 100,
        "num_samples": 100,
    },
    "digits": {"dataset": "digits", "steps": 4000, "batch_size": 128, "lr": 1e-3},
    "toy": {
        "dataset": "toy:gaussians8",
        "model": "mlp",
        "steps": 5000,
        "batch_size": 1024,
        "lr": 1e-3,
        "num_samples": 2000,
        "log_every": 250,
        "sampler": "ddpm",
        "sample_steps": 1000,
    },
    # 28x28 on 2 CPU cores, about 10 minutes (docs/data.md); the -gpu ones for one GPU.
    "animals": {"dataset": "animals", **CPU28},
    "animals-gpu": {"dataset": "animals", **GPU28},
    "mnist": CPU28,
    "mnist-gpu": GPU28,
}
_MNIST = ("dataset", "--dataset mnist:PATH (a folder of MNIST IDX files)")
PRESET_NEEDS = {"mnist": _MNIST, "mnist-gpu": _MNIST}

# The baselines as `--method` names. "vanilla" is L_simple everywhere in antdiff: uniform
# timesteps and the plain mean loss (Ho et al. 2020); min-snr and p2 are vanilla with that
# fixed loss weighting (debiased too), edm2 vanilla with EDM2's learned one.
VANILLA = {"method": "mean", "timestep_sampling": "uniform", "weighting": "constant"}
METHOD_SHORTHANDS: dict[str, dict[str, str]] = {
    "vanilla": VANILLA,
    "min-snr": {**VANILLA, "weighting": "min-snr"},
    "p2": {**VANILLA, "weighting": "p2"},
    "edm2": {**VANILLA, "weighting": "edm2"},
    "debiased": {**VANILLA, "weighting": "debiased"},
}

FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def resolve(
    preset: str | None = None,
    file: str | None = None,
    base: dict[str, Any] | None = None,
    **flags: Any,
) -> TrainConfig:
    """Defaults < `base` (a resumed run's own config) < preset < config file < flags (None flags
    are ignored)."""
    values: dict[str, Any] = dict(base or {})
    if preset:
        if preset not in PRESETS:
            raise AntError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if file:
        values.update(read_config_file(file))
    values.update({k: v for k, v in flags.items() if v is not None})
    key, what = PRESET_NEEDS.get(preset or "", (None, ""))
    if key is not None and key not in values:
        raise AntError(f"--preset {preset} needs {what}")
    return make_config(values)


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from explicit `values` (method shorthands expanded)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise AntError(f"unknown config key(s): {', '.join(unknown)}")
    values = expand_method(values)
    if values.get("objective") == "flow":  # its own defaults, where the user named none
        values = {"prediction": VELOCITY, "sampler": "euler", **values}
    for name, value in values.items():
        values[name] = _check_type(name, value)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def expand_method(values: dict[str, Any]) -> dict[str, Any]:
    """Replace a shorthand `method` (vanilla, min-snr, p2) by what it means; an explicit value
    that contradicts it (say `--method vanilla --timestep-sampling stratified`) is refused."""
    short = METHOD_SHORTHANDS.get(values.get("method", ""))
    if short is None:
        return dict(values)
    out = dict(values)
    for key, meant in short.items():
        given = values.get(key)
        same_family = key == "weighting" and str(given).split(":")[0] == meant
        if given is not None and key != "method" and given != meant and not same_family:
            flag = "--" + key.replace("_", "-")
            raise AntError(f"--method {values['method']} means {flag} {meant}, not {given}")
        out[key] = given if same_family else meant
    return out


def _check_type(name: str, value: Any) -> Any:
    """`value` as the field's type (an int where a float is wanted is fine); else AntError."""
    hint = _HINTS[name]
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


def validate(cfg: TrainConfig) -> None:
    """Ranges and names, all checked before a run directory exists."""
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
    if flow and cfg.schedule != "linear":
        raise AntError("--schedule is DDPM's noise schedule; flow matching's is --flow-shift")
    if not (math.isfinite(cfg.flow_shift) and cfg.flow_shift > 0):
        raise AntError(f"flow_shift must be a finite number > 0, got {cfg.flow_shift}")
    if not flow and cfg.flow_shift != 1.0:
        raise AntError("--flow-shift shifts flow matching's t: use it with --objective flow")
    check_size(cfg.timesteps)
    build_timestep_sampler(cfg.timestep_sampling, IntervalPartition.uniform(cfg.timesteps, 1))
    spec = ClusterSpec.parse(cfg.clusters)
    if spec.k > cfg.timesteps:
        raise AntError(f"--clusters {cfg.clusters}: K must be <= timesteps ({cfg.timesteps})")
    if spec.file is not None and not spec.auto and not Path(spec.file).is_file():
        raise AntError(f"affinity file not found: {spec.file}")
    if spec.auto:
        check_auto(cfg, spec.k)
    if cfg.method not in METHODS and not cfg.method.startswith(TORCHJD_PREFIX):
        names = ", ".join([*METHOD_SHORTHANDS, *METHODS, TORCHJD_PREFIX + "NAME"])
        raise AntError(f"unknown method {cfg.method!r}; choose from {names}")
    shaped = cfg.timestep_sampling.split(":")[0] not in ("uniform", "stratified")
    if cfg.method == "mean" and spec.k > 1 and shaped:
        raise AntError(
            f"--method mean averages the {spec.k} interval losses, which undoes the weight "
            f"--timestep-sampling {cfg.timestep_sampling} gives the intervals; use --clusters "
            "timestep:1 (one task: the plain mean over the samples)"
        )
    method = build_method(cfg.method, spec.k, **cfg.method_options)
    learned = build_weighting(cfg.weighting, cfg.prediction).name == "edm2"
    if learned and isinstance(method, GramianMethod):  # u would get no combined gradient
        raise AntError(f"the edm2 weighting trains with loss-based methods, not {cfg.method}")
    if learned and cfg.precision == "fp16":  # the loss scaler unscales the model's grads only
        raise AntError("the edm2 weighting trains in fp32 or bf16, not fp16")
    timestep_range(cfg)


def affinity_warmup(cfg: TrainConfig) -> int:
    """Steps of the warm-up of `affinity:K:auto`: the flag, or 2% of the steps. Measured on
    digits 8x8 over 5 seeds (the project's benchmark): 2% gave the steadiest partitions and the
    best FD; 10% and 20% sometimes a late last interval and a much worse FD."""
    if cfg.affinity_warmup is not None:
        return cfg.affinity_warmup
    return max(cfg.affinity_snapshots, round(0.02 * cfg.steps))


def check_auto(cfg: TrainConfig, k: int) -> None:
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


def timestep_range(cfg: TrainConfig) -> tuple[int, int] | None:
    """The inclusive [L, R] of `timestep_range` ("L:R"), validated against T; None when unset."""
    if cfg.timestep_range is None:
        return None
    try:
        lo, hi = (int(v) for v in cfg.timestep_range.split(":"))
    except ValueError:
        raise AntError(f"timestep_range must be L:R, got {cfg.timestep_range!r}") from None
    if not 0 <= lo <= hi < cfg.timesteps:
        raise AntError(f"timestep_range {lo}:{hi} must satisfy 0 <= L <= R < {cfg.timesteps}")
    return lo, hi


def read_config_file(path: str) -> dict[str, Any]:
    """The settings of a JSON (.json) or TOML (.toml) file."""
    p = Path(path)
    if not p.is_file():
        raise AntError(f"config file not found: {p}")
    if p.suffix not in (".json", ".toml"):
        raise AntError(f"config file {p} must be JSON (.json) or TOML (.toml)")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        data = json.loads(p.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise AntError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise AntError(f"config file {p} must hold one object of settings")
    return data

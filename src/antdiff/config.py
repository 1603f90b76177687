"""Typed training configuration, named presets, and config files (JSON or TOML).

Precedence: defaults < preset < config file < command-line flags. The resolved config is saved as
`config.json` in every run directory and is what `--resume`, `sample` and `export` read back.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from antdiff.errors import AntError


@dataclass
class TrainConfig:
    # data and model
    dataset: str = "digits"  # digits | toy:NAME | folder:PATH | npz:PATH | mnist:DIR
    resolution: int | None = None  # resize images to this side length
    vae: str | None = None  # AutoencoderKL path: train in its latent space (LDM-like)
    holdout: int | None = None  # images kept out of training for the held-out loss; None: 300
    # for digits, 0 otherwise
    model: str = "auto"  # a name from `antdiff models`, or auto (by data shape)
    model_options: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False  # class-conditional (needs labels); CFG at sampling
    label_dropout: float = 0.1  # probability of the null label while training (CFG)
    # diffusion
    schedule: str = "linear"  # linear | cosine | scaled-linear
    timesteps: int = 1000
    prediction: str = "epsilon"  # epsilon | v
    # ANT: tasks and the multi-task method
    clusters: str = "timestep:5"  # timestep:K | snr:K | log-snr:K | affinity:K:FILE.npy
    sampling: str = "stratified"  # stratified (B/K per interval, the paper) | uniform
    timestep_range: str | None = None  # "L:R": train only on t in [L, R] (a specialist, O2)
    method: str = "uw"  # vanilla | uw | famo | pcgrad | nash | torchjd:NAME
    method_options: dict[str, Any] = field(default_factory=dict)
    weighting: str = "constant"  # constant | min-snr[:gamma] | p2[:gamma=,k=] | soft-min-snr
    # optimisation
    steps: int = 2000
    batch_size: int = 64  # the GLOBAL batch, split across processes
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None  # None: the method's default (Nash-MTL 1.0), else off
    ema_decay: float = 0.999
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16/bf16 need a GPU)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # outputs
    out: str = "runs/run"
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_samples: int = 64  # samples drawn at the end of training
    sampler: str = "ddim"
    sample_steps: int = 50
    guidance: float = 1.0
    eval_every: int = 0  # evaluate the EMA model every N steps (0: never), into metrics.jsonl
    eval_num: int = 500  # samples per evaluation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def heldout_size(self) -> int:
        if self.holdout is not None:
            return self.holdout
        return 300 if self.dataset == "digits" else 0


# Named starting points; any flag overrides them.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"dataset": "digits", "method": "uw", "clusters": "timestep:5", "steps": 3000,
             "batch_size": 64, "lr": 2e-3, "ema_decay": 0.999, "checkpoint_every": 500,
             "log_every": 100, "num_samples": 100},
    "digits": {"dataset": "digits", "steps": 4000, "batch_size": 128, "lr": 1e-3},
    "toy": {"dataset": "toy:gaussians8", "model": "mlp", "steps": 5000, "batch_size": 1024,
            "lr": 1e-3, "num_samples": 2000, "log_every": 250, "sampler": "ddpm",
            "sample_steps": 1000},
    "mnist": {"dataset": "mnist:DIR", "model": "unet-small", "steps": 20000, "batch_size": 128,
              "lr": 2e-4, "checkpoint_every": 2000},
}  # fmt: skip

# `--method` shorthands for the fixed-weighting baselines: vanilla loss with that weighting.
METHOD_SHORTHANDS = {
    "vanilla": ("mean", None),
    "min-snr": ("mean", "min-snr"),
    "p2": ("mean", "p2"),
}

FIELDS = {f.name: f for f in fields(TrainConfig)}


def resolve(preset: str | None = None, file: str | None = None, **flags: Any) -> TrainConfig:
    """Defaults < preset < config file < flags (None flags are ignored)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise AntError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if file:
        values.update(read_config_file(file))
    values.update({k: v for k, v in flags.items() if v is not None})
    return make_config(values)


def make_config(values: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise AntError(f"unknown config key(s): {', '.join(unknown)}")
    values = dict(values)
    method = values.get("method", TrainConfig.method)
    if method in METHOD_SHORTHANDS:
        values["method"], weighting = METHOD_SHORTHANDS[method]
        if weighting and values.get("weighting", "constant") not in ("constant", weighting):
            raise AntError(f"--method {method} conflicts with --weighting {values['weighting']}")
        values["weighting"] = weighting or values.get("weighting", "constant")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}"),
        (0 <= cfg.label_dropout < 1, f"label_dropout must be in [0, 1), got {cfg.label_dropout}"),
        (cfg.precision in ("fp32", "bf16", "fp16"), f"unknown precision {cfg.precision!r}"),
        (cfg.prediction in ("epsilon", "v"), f"unknown prediction {cfg.prediction!r}"),
        (cfg.log_every >= 1 and cfg.checkpoint_every >= 1, "log/checkpoint intervals must be >= 1"),
        (cfg.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (cfg.holdout is None or cfg.holdout >= 0, f"holdout must be >= 0, got {cfg.holdout}"),
        (cfg.eval_every >= 0 and cfg.eval_num >= 2, "eval_every must be >= 0, eval_num >= 2"),
        (cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip must be > 0 (or unset)"),
    ]
    for ok, message in checks:
        if not ok:
            raise AntError(message)
    timestep_range(cfg)


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
    p = Path(path)
    if not p.is_file():
        raise AntError(f"config file not found: {p}")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        data = json.loads(p.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise AntError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise AntError(f"config file {p} must hold one object of settings")
    return data


def load_run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise AntError(f"{run_dir} is not a run directory (no config.json)")
    return make_config(json.loads(path.read_text()))

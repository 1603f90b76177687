"""Typed training configuration, named presets and config files (JSON or TOML).

Precedence: defaults < preset < config file < command-line flags. The resolved config is checked
whole (types, ranges, names of methods, costs, samplers) before anything is written; it is saved
as `config.json` in every run directory and is what `--resume`, `sample` and `export` read back.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from antdiff.diffusion.loss import VELOCITY
from antdiff.diffusion.weighting import weighting_help
from antdiff.errors import AntError
from antdiff.mtl import method_options_help
from antdiff.tasks.timesteps import timestep_sampling_help
from antdiff.validation import FLOW_SHIFT, check_type, validate


@dataclass
class TrainConfig:
    """Everything that determines a run; each field's metadata["help"] says what it means (the
    text of its command-line flag)."""

    # data and model
    dataset: str = field(
        default="digits",
        metadata={
            "help": "digits | animals | toy:NAME | folder:PATH | npz:PATH | mnist:DIR (IDX files)"
        },
    )
    resolution: int | None = field(
        default=None, metadata={"help": "resize images to this side length"}
    )
    vae: str | None = field(
        default=None,
        metadata={"help": "a diffusers AutoencoderKL folder: train in its latent space (LDM)"},
    )
    holdout: int | None = field(
        default=None,
        metadata={
            "help": "samples kept out of training (held-out loss); digits 300, animals 1000, else 0"
        },
    )
    model: str = field(
        default="auto",
        metadata={
            "help": "auto (by data shape), unet-tiny, unet-small, unet-base, dit-tiny, dit-s, mlp"
        },
    )
    model_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "JSON object overriding the model's diffusers config"},
    )
    conditional: bool = field(
        default=False,
        metadata={"help": "class-conditional (needs labels); classifier-free guidance at sampling"},
    )
    label_dropout: float = field(
        default=0.1,
        metadata={
            "help": "probability of the null label while training (classifier-free guidance)"
        },
    )
    # diffusion
    objective: str = field(
        default="ddpm",
        metadata={
            "help": "ddpm (noise prediction, DDPM forward process) | flow (flow matching: "
            "x_t = (1 - t) x0 + t eps, velocity target; sampler euler, prediction velocity)"
        },
    )
    schedule: str = field(
        default="linear", metadata={"help": "DDPM noise schedule: linear | cosine | scaled-linear"}
    )
    flow_shift: float = field(
        default=1.0,
        metadata={
            "help": "flow matching: SD3's shift of t, sigma = s t / (1 + (s - 1) t) (1: none); "
            f"{FLOW_SHIFT.range_text()}"
        },
    )
    timesteps: int = field(
        default=1000,
        metadata={
            "help": "number of diffusion timesteps T (flow matching: bins of t for the tasks)"
        },
    )
    prediction: str = field(
        default="epsilon",
        metadata={
            "help": "what the network predicts: epsilon | v | sample (DDPM), velocity (flow)"
        },
    )
    # ANT: tasks and the multi-task method
    clusters: str = field(
        default="timestep:5",
        metadata={
            "help": "the interval tasks, COST:K: timestep:K | snr:K | log-snr:K | affinity:K:FILE "
            "| affinity:K:auto (measured during a warm-up)"
        },
    )
    timestep_sampling: str = field(
        default="stratified",
        metadata={
            "help": "stratified (B/K per interval, the paper) | uniform | logit-normal[:m,s] | "
            "mode[:scale] | loss-aware[:history]; options as NAME:v1,v2 (in order) or "
            f"NAME:key=v, each key once: {timestep_sampling_help()}"
        },
    )
    timestep_range: str | None = field(
        default=None, metadata={"help": "L:R: train on t in [L, R] only (a specialist, for O2)"}
    )
    method: str = field(
        default="uw",
        metadata={
            "help": "uw | pcgrad | nash | famo | mean | torchjd:NAME; baselines vanilla | min-snr "
            "| p2 | debiased | edm2"
        },
    )
    method_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "JSON object of the method's options, e.g. '{\"lr\": 0.025}' for uw: "
            f"{method_options_help()}; torchjd:NAME: update_every, seed and torchjd's own"
        },
    )
    weighting: str = field(
        default="constant",
        metadata={
            "help": "loss weighting: constant | min-snr[:gamma] | p2[:gamma=,k=] "
            "| soft-min-snr | debiased | sigma-sqrt, cosmap (flow) | edm2 (learned); options as "
            f"NAME:v1,v2 (in order) or NAME:key=v, each key once: {weighting_help()}"
        },
    )
    affinity_warmup: int | None = field(
        default=None,
        metadata={
            "help": "affinity:K:auto: vanilla steps before the tasks are chosen (2% of steps)"
        },
    )
    affinity_bins: int = field(
        default=20,
        metadata={"help": "affinity:K:auto: equal timestep bins of the affinity measurement"},
    )
    affinity_probe: int = field(
        default=32,
        metadata={"help": "affinity:K:auto: fixed training samples whose gradients are measured"},
    )
    affinity_snapshots: int = field(
        default=3,
        metadata={"help": "affinity:K:auto: measurements spread over the warm-up, averaged"},
    )
    # optimisation
    steps: int = field(default=2000, metadata={"help": "training steps"})
    batch_size: int = field(
        default=64, metadata={"help": "the GLOBAL batch, split across processes"}
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the model"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the model"})
    grad_clip: float | None = field(
        default=None,
        metadata={
            "help": "clip the gradient norm (default: the method's, Nash-MTL 1.0; else none)"
        },
    )
    ema_decay: float = field(
        default=0.999, metadata={"help": "decay of the EMA weights that sampling uses"}
    )
    precision: str = field(
        default="fp32", metadata={"help": "fp32 | bf16 | fp16 (bf16 and fp16 need a GPU)"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the weights, the batches and the samples"}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    # outputs
    out: str = field(default="runs/run", metadata={"help": "the run directory"})
    log_every: int = field(default=50, metadata={"help": "write a metrics.jsonl row every N steps"})
    checkpoint_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps"})
    keep_checkpoints: int = field(
        default=2, metadata={"help": "checkpoints kept on disk (the newest)"}
    )
    num_samples: int = field(
        default=64, metadata={"help": "samples drawn at the end of training (samples.png)"}
    )
    sampler: str = field(
        default="ddim",
        metadata={"help": "sampler: ddpm | ddim | dpm++ (DDPM), euler | heun (flow)"},
    )
    sample_steps: int = field(default=50, metadata={"help": "sampling steps"})
    guidance: float = field(
        default=1.0, metadata={"help": "classifier-free guidance scale of the samples"}
    )
    eval_every: int = field(
        default=0,
        metadata={"help": "evaluate the EMA model every N steps into metrics.jsonl (0: never)"},
    )
    eval_num: int = field(default=500, metadata={"help": "samples per evaluation"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def heldout_size(self) -> int:
        if self.holdout is not None:
            return self.holdout
        return {"digits": 300, "animals": 1000}.get(self.dataset, 0)


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

# `--ant`: the recommended ANT recipe of each objective, from the measurements in
# docs/results.md ("ANT in the form practitioners use"). DDPM: ANT-UW over the automatic
# affinity intervals with the paper's B/K samples per interval (level with loss-aware sampling,
# ahead of the other baselines). Flow matching: the same intervals over SD3's logit-normal
# density, UW's weights only correcting it within [1/2, 2] (`anchored:uw`; ahead of ANT-UW
# alone, level with logit-normal alone).
ANT_RECIPES: dict[str, dict[str, str]] = {
    "ddpm": {"method": "uw", "clusters": "affinity:5:auto", "timestep_sampling": "stratified"},
    "flow": {
        "method": "anchored:uw",
        "clusters": "affinity:5:auto",
        "timestep_sampling": "logit-normal:0,1",
    },
}

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
    ant: bool = False,
    **flags: Any,
) -> TrainConfig:
    """Defaults < `base` (a resumed run's own config) < preset < config file < flags (None flags
    are ignored); `ant` then adds the objective's recipe (ANT_RECIPES), refusing a value that
    contradicts it."""
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
    return make_config(expand_ant(values) if ant else values)


def expand_ant(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the recipe of `--ant` for their objective written out; a value given for
    one of its keys must be the recipe's."""
    recipe = ANT_RECIPES.get(values.get("objective", "ddpm"))
    if recipe is None:  # an unknown objective: the config check names it
        return values
    for key, meant in recipe.items():
        given = values.get(key)
        if given is not None and given != meant:
            flag = "--" + key.replace("_", "-")
            raise AntError(f"--ant means {flag} {meant}, not {given}")
    return {**values, **recipe}


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from explicit `values` (method shorthands expanded)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise AntError(f"unknown config key(s): {', '.join(unknown)}")
    values = expand_method(values)
    if values.get("objective") == "flow":  # its own defaults, where the user named none
        values = {"prediction": VELOCITY, "sampler": "euler", **values}
    for name, value in values.items():
        values[name] = check_type(name, _HINTS[name], value)
    cfg = TrainConfig(**values)
    validate(cfg, shorthands=METHOD_SHORTHANDS)
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

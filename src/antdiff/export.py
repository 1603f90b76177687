"""Export a trained denoiser as a diffusers directory.

- Unconditional UNet2DModel: a full ``DDPMPipeline`` (``DDPMPipeline.from_pretrained(dir)``).
- Class-conditional UNet, DiT, the 2-D MLP, or any flow-matching model: the model in ``unet/``,
  ``transformer/`` or ``mlp/`` and its scheduler in ``scheduler/`` (DDPM's, or diffusers'
  ``FlowMatchEulerDiscreteScheduler`` with the run's shift), loadable with the model class's
  ``from_pretrained(dir, subfolder=...)`` and the scheduler class's ``from_pretrained(dir,
  subfolder="scheduler")`` (``load_exported`` does it; ``antdiff sample --run DIR`` samples
  it). diffusers' DiTPipeline is not used: it hard-codes ImageNet's 1000 classes and requires a
  VAE.
Every export also writes ``antdiff.json`` (model spec, null label, prediction type) and a README.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDPMPipeline, DiTTransformer2DModel, UNet2DModel
from torch import nn

from antdiff.data import decode_latents, load_vae
from antdiff.diffusion import FlowPath, NoiseSchedule, Schedule, generate, make_scheduler
from antdiff.diffusion.guidance import FULL
from antdiff.errors import AntError, writing
from antdiff.models import Denoiser, PointMLP, disable_label_dropout, unwrap

SUBFOLDERS = {"unet": "unet", "dit": "transformer", "mlp": "mlp"}
CLASSES = {"unet": UNet2DModel, "dit": DiTTransformer2DModel, "mlp": PointMLP}

_README = """# Diffusion model exported by antdiff

Model: `{name}` ({cls}), {kind}; prediction type `{prediction}`; schedule `{schedule}`, T={T}.
{flow}

```python
{code}
```
"""

_CODE_PIPE = """from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained("{dir}")
images = pipe(batch_size=16, num_inference_steps=1000).images"""

_CODE_MODEL = """from diffusers import {scheduler}, {cls}
model = {cls}.from_pretrained("{dir}", subfolder="{sub}").eval()
scheduler = {scheduler}.from_pretrained("{dir}", subfolder="scheduler")
# class labels 0..{k1}; label {null} is the null label for classifier-free guidance
# with antdiff installed: from antdiff.export import load_exported
#   model, scheduler, info = load_exported("{dir}")   # model(x, t, y)"""

_CODE_MLP = """from antdiff.models import PointMLP
from diffusers import {scheduler}
model = PointMLP.from_pretrained("{dir}", subfolder="mlp").eval()   # model(x, t, y=None)
scheduler = {scheduler}.from_pretrained("{dir}", subfolder="scheduler")"""

_FLOW = """Flow matching: x_t = (1 - sigma) x0 + sigma eps, the model predicts eps - x0 from
(x_t, sigma * {T}); integrate from sigma = 1 with the scheduler's `step` (shift {shift:g}).
"""


def _spec(model: nn.Module) -> tuple[Denoiser, dict[str, Any]]:
    inner = unwrap(model)
    if not isinstance(inner, Denoiser):
        raise AntError("export needs a model from antdiff.models.build_model")
    return inner, dict(inner.spec)


def export_pipeline(
    model: nn.Module,
    schedule: Schedule,
    out_dir: str | os.PathLike[str],
    prediction: str = "epsilon",
    *,
    clip_sample: bool = True,
    vae: str | None = None,
    shape: tuple[int, ...] | None = None,
) -> Path:
    """Write a diffusers directory for ``model`` (see the module docstring for the layout).

    ``clip_sample`` (x_0 clipped to [-1, 1] while sampling) suits pixels, not latents or points.
    ``vae``: the AutoencoderKL of a latent model, copied into ``vae/``. ``shape``: one sample's
    shape in the model's space, recorded so that `sample_exported` can draw from the export.
    """
    den, spec = _spec(model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AntError(f"cannot write {out}: it is a file")
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # written aside, then moved in: a full disk leaves no half export in `out`
        _write(den, spec, schedule, tmp, prediction, clip_sample, vae, shape)
        _publish(tmp, out)
    except AntError:
        raise
    except Exception as e:  # OSError, SafetensorError, torch's RuntimeError: a full disk
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise AntError(f"cannot write {out}: {reason}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the export written to `tmp` into `out`: by one rename where `out` is absent or
    empty, else entry by entry with antdiff.json last (what makes a folder an export)."""
    if not out.exists() or not any(out.iterdir()):
        os.replace(tmp, out)
        return
    meta = tmp / "antdiff.json"
    for entry in [*sorted(p for p in tmp.iterdir() if p != meta), meta]:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def _write(
    den: Denoiser,
    spec: dict[str, Any],
    schedule: Schedule,
    out: Path,
    prediction: str,
    clip_sample: bool,
    vae: str | None,
    shape: tuple[int, ...] | None,
) -> None:
    """The export's files in the fresh folder `out`."""
    out.mkdir()
    flow = isinstance(schedule, FlowPath)
    scheduler = make_scheduler(schedule, "euler" if flow else "ddpm", prediction, clip_sample)
    family = den.family
    pipeline = family == "unet" and not den.conditional and vae is None and not flow
    if pipeline:
        DDPMPipeline(unet=den.net, scheduler=scheduler).save_pretrained(out)
    else:
        den.net.save_pretrained(out / SUBFOLDERS[family])
        scheduler.save_pretrained(out / "scheduler")
    if vae is not None:
        load_vae(vae).save_pretrained(out / "vae")
    info = {
        "model": spec,
        "family": family,
        "subfolder": None if pipeline else SUBFOLDERS[family],
        "pipeline": "DDPMPipeline" if pipeline else None,
        "num_classes": den.num_classes,
        "null_label": den.num_classes if den.conditional else None,
        "prediction": prediction,
        "schedule": schedule.name,
        "scheduler": type(scheduler).__name__,
        "timesteps": schedule.timesteps,
        "flow_shift": schedule.shift if flow else None,
        "vae": "vae" if vae is not None else None,
        "shape": list(shape) if shape is not None else None,
        "clip_sample": clip_sample,
    }
    (out / "antdiff.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(_readme(info, schedule))


def _readme(info: dict[str, Any], schedule: Schedule) -> str:
    family, k = info["family"], info["num_classes"]
    cls = CLASSES[family].__name__
    fmt = {
        "dir": "PATH",
        "cls": cls,
        "sub": info["subfolder"],
        "k1": k - 1,
        "null": k,
        "scheduler": info["scheduler"],
    }
    if info["pipeline"]:
        code = _CODE_PIPE.format(**fmt)
    elif family == "mlp":
        code = _CODE_MLP.format(**fmt)
    else:
        code = _CODE_MODEL.format(**fmt)
    kind = f"class-conditional ({k} classes)" if k else "unconditional"
    shift = info["flow_shift"]
    flow = _FLOW.format(T=schedule.timesteps, shift=shift) if shift is not None else ""
    return _README.format(
        name=info["model"]["name"],
        cls=cls,
        kind=kind,
        prediction=info["prediction"],
        schedule=schedule.name,
        T=schedule.timesteps,
        code=code,
        flow=flow,
    )


def load_exported(path: str | os.PathLike[str]) -> tuple[Denoiser, Any, dict[str, Any]]:
    """Load an export: (Denoiser around the diffusers model, its scheduler, antdiff.json)."""
    root = Path(path)
    meta_path = root / "antdiff.json"
    if not meta_path.is_file():
        raise AntError(f"not an antdiff export (no antdiff.json): {root}")
    info = _read_meta(meta_path)
    family = info["family"]
    sub = info.get("subfolder") or "unet"
    name = info.get("scheduler", "DDPMScheduler")  # older exports: DDPM
    kind = getattr(diffusers, name, None) if isinstance(name, str) else None
    if kind is None or not name.endswith("Scheduler"):
        raise AntError(f"{meta_path} names an unknown scheduler {name!r}: export the run again")
    try:
        net = CLASSES[family].from_pretrained(root, subfolder=sub).eval()
        scheduler = kind.from_pretrained(root, subfolder="scheduler")
    except (OSError, ValueError) as e:  # a missing or corrupt file of the export
        raise AntError(f"{root} is a damaged export ({str(e).splitlines()[0]})") from None
    if family == "dit":
        disable_label_dropout(net)
    return Denoiser(net, info["model"]), scheduler, info


# What an export's antdiff.json must hold to be loaded, and to be sampled by antdiff.
META_KEYS = ("family", "model")
SAMPLING_KEYS = ("prediction", "schedule", "timesteps", "clip_sample")


def _read_meta(path: Path) -> dict[str, Any]:
    """antdiff.json, checked: valid JSON, a known model family, the keys loading reads."""
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise AntError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise AntError(f"{path} does not hold a JSON object")
    missing = [k for k in META_KEYS if k not in info]
    if missing:
        raise AntError(f"{path} lacks {', '.join(missing)}: export the run again")
    if info["family"] not in CLASSES:
        raise AntError(f"{path} names an unknown model family {info['family']!r}")
    return info


def is_export(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an `antdiff export` directory (not a run directory)."""
    return (Path(path) / "antdiff.json").is_file() and not (Path(path) / "config.json").exists()


def sample_exported(
    path: str | os.PathLike[str],
    num: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    device: str = "cpu",
    guidance_interval: tuple[float, float] = FULL,
) -> torch.Tensor:
    """`num` samples in data space from an export (decoded through its VAE for latents)."""
    model, _, info = load_exported(path)
    missing = [k for k in ("shape", *SAMPLING_KEYS) if info.get(k) is None]
    if missing:
        raise AntError(f"{path} was exported without its {missing[0]}: export the run again")
    if info.get("flow_shift") is not None:
        schedule: Schedule = FlowPath(info["timesteps"], info["flow_shift"])
    else:
        schedule = NoiseSchedule.from_name(info["schedule"], info["timesteps"])
    x = generate(
        model.to(device),
        schedule,
        num,
        tuple(info["shape"]),
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        generator=generator,
        prediction=info["prediction"],
        clip_sample=info["clip_sample"],
        guidance_interval=guidance_interval,
    )
    if info.get("vae") is not None:
        x = decode_latents(x, str(Path(path) / info["vae"]))
    return x

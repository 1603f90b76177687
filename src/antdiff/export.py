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
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDPMPipeline, DiTTransformer2DModel, UNet2DModel
from torch import nn

from antdiff.data import decode_latents, load_vae
from antdiff.diffusion import FlowPath, NoiseSchedule, Schedule, generate, make_scheduler
from antdiff.errors import AntError
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
    out.mkdir(parents=True, exist_ok=True)
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
    return out


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
    info = json.loads(meta_path.read_text())
    family = info["family"]
    sub = info["subfolder"] or "unet"
    net = CLASSES[family].from_pretrained(root, subfolder=sub).eval()
    if family == "dit":
        disable_label_dropout(net)
    kind = getattr(diffusers, info.get("scheduler", "DDPMScheduler"))  # older exports: DDPM
    scheduler = kind.from_pretrained(root, subfolder="scheduler")
    return Denoiser(net, info["model"]), scheduler, info


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
) -> torch.Tensor:
    """`num` samples in data space from an export (decoded through its VAE for latents)."""
    model, _, info = load_exported(path)
    if info.get("shape") is None:
        raise AntError(f"{path} was exported without its sample shape: export the run again")
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
    )
    if info["vae"] is not None:
        x = decode_latents(x, str(Path(path) / info["vae"]))
    return x

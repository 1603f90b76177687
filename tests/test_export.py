"""Export round trip: diffusers loads what we write and reproduces the in-library outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from torch import nn

from antdiff.diffusion import NoiseSchedule, generate
from antdiff.errors import AntError
from antdiff.export import export_pipeline, load_exported
from antdiff.models import PointMLP, build_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000)


def _jitter(model: nn.Module) -> nn.Module:
    """Untrained diffusers models zero their output layers; make outputs non-trivial."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_unconditional_unet_is_a_ddpm_pipeline(schedule: NoiseSchedule, tmp_path: Path) -> None:
    model = _jitter(build_model("unet-tiny", channels=1, size=8))
    out = export_pipeline(model, schedule, tmp_path / "exp", "epsilon")
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    pipe = DDPMPipeline.from_pretrained(out)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, model(x, t))
    images = pipe(
        batch_size=2,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    ours = generate(
        model,
        schedule,
        2,
        (1, 8, 8),
        sampler="ddpm",
        steps=2,
        clip_sample=True,
        generator=torch.Generator().manual_seed(0),
    )
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, ours, atol=1e-5)
    assert not np.allclose(images[0], images[1])


def _two_step_loop(net: nn.Module, scheduler: DDPMScheduler, y: torch.Tensor | None, dit: bool):
    """The sampling loop a diffusers user writes by hand for a class-conditional model."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=g)
    scheduler.set_timesteps(2)
    for t in scheduler.timesteps:
        tb = t.expand(2)
        with torch.no_grad():
            kw = {"timestep": tb, "class_labels": y} if dit else {"class_labels": y}
            out = net(x, **kw).sample if dit else net(x, tb, **kw).sample
        x = scheduler.step(out, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize(
    ("name", "cls"), [("unet-tiny", UNet2DModel), ("dit-tiny", DiTTransformer2DModel)]
)
def test_conditional_export_round_trip(
    schedule: NoiseSchedule, tmp_path: Path, name: str, cls: type
) -> None:
    model = _jitter(build_model(name, channels=1, size=8, num_classes=10))
    out = export_pipeline(model, schedule, tmp_path / "exp", "v", clip_sample=False)
    info = json.loads((out / "antdiff.json").read_text())
    assert info["null_label"] == 10 and info["prediction"] == "v"
    net = cls.from_pretrained(out, subfolder=info["subfolder"]).eval()
    scheduler = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    y = torch.tensor([3, 10])  # a class and the null label
    dit = cls is DiTTransformer2DModel
    ours = generate(
        model,
        schedule,
        2,
        (1, 8, 8),
        sampler="ddpm",
        steps=2,
        labels=y,
        prediction="v",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(_two_step_loop(net, scheduler, y, dit), ours)
    loaded, _, _ = load_exported(out)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y))


def test_mlp_export_round_trip(schedule: NoiseSchedule, tmp_path: Path) -> None:
    model = _jitter(build_model("mlp", channels=2, size=0, num_classes=3))
    out = export_pipeline(model, schedule, tmp_path / "exp", clip_sample=False)
    net = PointMLP.from_pretrained(out, subfolder="mlp").eval()
    x, t, y = torch.randn(4, 2), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y), model(x, t, y))
        torch.testing.assert_close(net(x, t), model(x, t, torch.full((4,), 3)))
    assert "PointMLP.from_pretrained" in (out / "README.md").read_text()


def test_export_errors(schedule: NoiseSchedule, tmp_path: Path) -> None:
    with pytest.raises(AntError, match="build_model"):
        export_pipeline(nn.Linear(2, 2), schedule, tmp_path / "x")
    with pytest.raises(AntError, match="not an antdiff export"):
        load_exported(tmp_path)


def test_latent_model_export_carries_its_vae(schedule: NoiseSchedule, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    vae.save_pretrained(tmp_path / "vae")
    model = build_model("unet-tiny", channels=4, size=8)
    out = export_pipeline(
        model, schedule, tmp_path / "exp", clip_sample=False, vae=str(tmp_path / "vae")
    )
    info = json.loads((out / "antdiff.json").read_text())
    assert info["vae"] == "vae" and info["subfolder"] == "unet" and info["pipeline"] is None
    loaded = AutoencoderKL.from_pretrained(out / "vae")
    assert loaded.config.latent_channels == 4
    assert not DDPMScheduler.from_pretrained(out, subfolder="scheduler").config.clip_sample

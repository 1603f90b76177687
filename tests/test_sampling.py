"""Generation: oracle denoisers recover the data, guidance algebra, determinism, writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from torch import nn

from antdiff.data import load_dataset
from antdiff.diffusion import NoiseSchedule
from antdiff.diffusion.samplers import DDPM_SAMPLERS, balanced_labels, generate, make_scheduler
from antdiff.errors import AntError
from antdiff.models import build_model
from antdiff.sample_files import save_grid, save_npz

# diffusers 0.42 DPM-Solver calls np.array(tensor, copy=False): a NumPy 2 deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000)


class PointMassOracle(nn.Module):
    """Exact denoiser for data = the single point c: eps = (x_t - sqrt(a) c) / sqrt(1 - a)."""

    def __init__(self, c: torch.Tensor, schedule: NoiseSchedule, prediction: str):
        super().__init__()
        self.c, self.a, self.prediction = c, schedule.alphas_cumprod, prediction

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        a = self.a[t].float().view(-1, *([1] * (x.ndim - 1)))
        eps = (x - a.sqrt() * self.c) / (1 - a).sqrt()
        if self.prediction == "sample":
            return self.c.expand_as(x)
        return eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.c


@pytest.mark.parametrize("sampler", DDPM_SAMPLERS)
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_oracle_denoiser_recovers_the_data(
    schedule: NoiseSchedule, sampler: str, prediction: str
) -> None:
    c = torch.tensor([0.5, -1.5])
    oracle = PointMassOracle(c, schedule, prediction)
    steps = 50 if sampler == "ddpm" else 10
    out = generate(
        oracle,
        schedule,
        8,
        (2,),
        sampler=sampler,
        steps=steps,
        prediction=prediction,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, c.expand(8, 2), atol=1e-4, rtol=0)


def test_make_scheduler(schedule: NoiseSchedule) -> None:
    kinds = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
    for name, cls in kinds.items():
        s = make_scheduler(schedule, name, "v")
        assert isinstance(s, cls) and s.config.prediction_type == "v_prediction"
        torch.testing.assert_close(s.alphas_cumprod.double(), schedule.alphas_cumprod)
    assert make_scheduler(schedule, "ddim", "epsilon", clip_sample=True).config.clip_sample
    for name in ("euler", "bogus"):  # euler integrates flow matching, not a DDPM model
        with pytest.raises(AntError, match="does not sample a DDPM model"):
            make_scheduler(schedule, name)


@pytest.mark.parametrize("sampler", DDPM_SAMPLERS)
def test_sampler_determinism(schedule: NoiseSchedule, cond_mlp: nn.Module, sampler: str) -> None:
    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(
            cond_mlp,
            schedule,
            10,
            (2,),
            sampler=sampler,
            steps=8,
            generator=g,
            batch_size=4,
            guidance=2.0,
        )

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (10, 2) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert cond_mlp.training  # generate restores the training mode


class ExplicitGuidance(nn.Module):
    """Reference CFG written out: eps_u + g (eps_c - eps_u), as a plain conditional model."""

    def __init__(self, model: nn.Module, g: float):
        super().__init__()
        self.model, self.g, self.num_classes = model, g, model.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = self.model(x, t, y)
        uncond = self.model(x, t, torch.full_like(y, self.num_classes))
        return uncond + self.g * (cond - uncond)


@pytest.mark.parametrize("g", [0.0, 1.0, 3.0])
def test_guidance_matches_reference(schedule: NoiseSchedule, cond_mlp: nn.Module, g: float) -> None:
    labels = torch.tensor([0, 1, 2, 3, 1, 2])

    def run(model: nn.Module, guidance: float, y: torch.Tensor) -> torch.Tensor:
        return generate(
            model,
            schedule,
            6,
            (2,),
            sampler="ddim",
            steps=6,
            guidance=guidance,
            labels=y,
            generator=torch.Generator().manual_seed(3),
        )

    out = run(cond_mlp, g, labels)
    torch.testing.assert_close(out, run(ExplicitGuidance(cond_mlp, g), 1.0, labels))
    if g == 1.0:  # guidance 1 is the plain conditional model
        plain = run(cond_mlp, 1.0 + 1e-9, labels)  # forces the two-pass path
        torch.testing.assert_close(out, plain)
    if g == 0.0:  # guidance 0 is the unconditional model
        torch.testing.assert_close(out, run(cond_mlp, 1.0, torch.full((6,), 4)))


def test_default_labels_are_balanced(schedule: NoiseSchedule, cond_mlp: nn.Module) -> None:
    assert balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = generate(cond_mlp, schedule, 8, (2,), steps=4, generator=g())
    b = generate(cond_mlp, schedule, 8, (2,), steps=4, generator=g(), labels=balanced_labels(8, 4))
    assert torch.equal(a, b)
    with pytest.raises(AntError, match="labels must have shape"):
        generate(cond_mlp, schedule, 8, (2,), steps=4, labels=torch.zeros(3, dtype=torch.long))


def test_image_model_generation(schedule: NoiseSchedule) -> None:
    model = build_model("unet-tiny", channels=1, size=8, num_classes=10)
    out = generate(
        model,
        schedule,
        3,
        (1, 8, 8),
        sampler="dpm++",
        steps=3,
        clip_sample=True,
        generator=torch.Generator().manual_seed(0),
        guidance=1.5,
    )
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_save_grid(tmp_path: Path) -> None:
    x = torch.linspace(-1, 1, 5 * 8 * 8).view(5, 1, 8, 8)
    path = save_grid(x, tmp_path / "g.png", scale=1)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 9 + 1, 3 * 9 + 1)  # 3x2 cells of 8 px, 1 px padding
    assert img[1, 1] == 0 and img[9 + 8, 9 + 8] == 255  # first pixel -1, last pixel of #5 is +1
    rgb = save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "rgb.png")  # auto scale: 8 px -> 32 px
    assert Image.open(rgb).size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))
    assert Image.open(save_grid(torch.randn(100, 2), tmp_path / "pts.png")).format == "PNG"
    with pytest.raises(AntError, match="decode latents"):
        save_grid(torch.zeros(2, 4, 8, 8), tmp_path / "z.png")


def test_save_npz_round_trip(tmp_path: Path) -> None:
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    labels = torch.tensor([1, 0, 3, 2])
    d = load_dataset(f"npz:{save_npz(tmp_path / 's.npz', x, labels)}")
    assert d.x.shape == x.shape and torch.equal(d.labels, labels)
    assert (d.x - x).abs().max() <= 1 / 127.5  # uint8 quantisation
    assert np.array_equal(np.load(tmp_path / "s.npz")["samples"], x.numpy())
    pts = torch.randn(6, 2)
    d = load_dataset(f"npz:{save_npz(tmp_path / 'p.npz', pts)}")
    assert d.kind == "points" and torch.equal(d.x, pts)

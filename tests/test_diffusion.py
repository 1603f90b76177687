"""Per-sample loss: formulas for epsilon and v targets, oracle models give zero loss."""

from __future__ import annotations

import pytest
import torch

from antdiff.diffusion import NoiseSchedule, per_sample_loss, q_sample, target
from antdiff.errors import AntError
from antdiff.models import build_model


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("cosine", 1000)


def _batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(b, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(b, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])[:b]
    return x0, t, noise


def test_q_sample_and_targets_match_diffusers(schedule: NoiseSchedule) -> None:
    x0, t, noise = _batch()
    sched = schedule.scheduler()
    torch.testing.assert_close(
        q_sample(x0, t, noise, schedule.alphas_cumprod), sched.add_noise(x0, noise, t)
    )
    torch.testing.assert_close(
        target(x0, t, noise, schedule.alphas_cumprod, "v"), sched.get_velocity(x0, noise, t)
    )
    assert target(x0, t, noise, schedule.alphas_cumprod, "epsilon") is noise


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_loss_equals_direct_formula(schedule: NoiseSchedule, prediction: str) -> None:
    x0, t, noise = _batch()
    seen = {}

    def model(xt: torch.Tensor, tt: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen["xt"] = xt
        return torch.tanh(xt) * (tt.view(-1, 1, 1, 1) + 1) / 1000

    loss = per_sample_loss(model, x0, t, noise, schedule.alphas_cumprod, prediction=prediction)
    a = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    goal = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    ref = ((model(xt, t, None) - goal) ** 2).mean(dim=(1, 2, 3))
    assert loss.shape == (6,)
    torch.testing.assert_close(seen["xt"], xt)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_oracle_model_has_zero_loss(schedule: NoiseSchedule, prediction: str) -> None:
    x0, t, noise = _batch()
    a = schedule.alphas_cumprod

    def oracle(xt: torch.Tensor, tt: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return target(x0, tt, noise, a, prediction)

    loss = per_sample_loss(oracle, x0, t, noise, a, prediction=prediction)
    assert torch.equal(loss, torch.zeros(6))


def test_loss_is_per_sample_and_passes_labels(schedule: NoiseSchedule) -> None:
    model = build_model("mlp", channels=2, size=0, num_classes=3)
    x0, noise = torch.randn(5, 2), torch.randn(5, 2)
    t, y = torch.tensor([3, 100, 400, 700, 999]), torch.tensor([0, 1, 2, 3, 1])
    a = schedule.alphas_cumprod
    full = per_sample_loss(model, x0, t, noise, a, y=y)
    for i in range(5):
        s = slice(i, i + 1)
        one = per_sample_loss(model, x0[s], t[s], noise[s], a, y=y[s])
        torch.testing.assert_close(one, full[s])
    other = per_sample_loss(model, x0, t, noise, a, y=torch.zeros(5, dtype=torch.long))
    assert not torch.allclose(full, other)
    full.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_each_target_determines_x0(schedule: NoiseSchedule, prediction: str) -> None:
    x0, t, noise = _batch(5)  # t <= 998: at t = 999 sqrt(alpha_bar) ~ 0 makes eps -> x0 unstable
    a = schedule.alphas_cumprod.float()
    sa, s1a = a[t].sqrt().view(-1, 1, 1, 1), (1 - a[t]).sqrt().view(-1, 1, 1, 1)
    xt = q_sample(x0, t, noise, a)
    out = target(x0, t, noise, a, prediction)
    x0_hat = {"epsilon": (xt - s1a * out) / sa, "v": sa * xt - s1a * out, "sample": out}
    torch.testing.assert_close(x0_hat[prediction], x0, atol=1e-4, rtol=0)


def test_unknown_prediction(schedule: NoiseSchedule) -> None:
    x0, t, noise = _batch()
    with pytest.raises(AntError, match="unknown prediction"):
        per_sample_loss(lambda *a: a[0], x0, t, noise, schedule.alphas_cumprod, prediction="x0")

"""Loss weightings against independent computations (issue: wrong formulas keep being shipped)."""

from __future__ import annotations

import math

import pytest
import torch

from antdiff.diffusion import NoiseSchedule, build_weighting
from antdiff.errors import AntError

SNR = torch.tensor([0.25, 1.0, 5.0, 100.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("spec", "prediction", "expected"),
    [  # worked by hand from the papers' formulas
        ("min-snr:5", "epsilon", [1.0, 1.0, 1.0, 0.05]),
        ("min-snr:5", "v", [0.2, 0.5, 5 / 6, 5 / 101]),
        ("min-snr:5", "sample", [0.25, 1.0, 5.0, 5.0]),
        ("soft-min-snr:5", "epsilon", [5 / 5.25, 5 / 6, 0.5, 5 / 105]),
        (
            "soft-min-snr:5",
            "v",
            [0.2 * 5 / 5.25, 0.5 * 5 / 6, 0.5 * 5 / 6, 5 / 105 * 100 / 101],
        ),
        ("p2:gamma=1,k=1", "epsilon", [0.8, 0.5, 1 / 6, 1 / 101]),
        (
            "p2:gamma=0.5,k=1",
            "epsilon",
            [1 / math.sqrt(1.25), 1 / math.sqrt(2), 1 / math.sqrt(6), 1 / math.sqrt(101)],
        ),
        ("p2:gamma=1,k=1", "v", [0.8 * 0.2, 0.5 * 0.5, 5 / 36, 100 / 101**2]),
        ("constant", "v", [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_golden_values(spec: str, prediction: str, expected: list[float]) -> None:
    got = build_weighting(spec, prediction)(SNR)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def losses_in_every_space(schedule: NoiseSchedule, t: torch.Tensor, seed: int = 0):
    """Per-sample MSE of one random eps prediction, seen as eps, v and x0 predictions.

    Independent of antdiff.weighting: converts through x_t = a x0 + s eps, v = a eps - s x0.
    """
    gen = torch.Generator().manual_seed(seed)
    abar = schedule.alphas_cumprod[t].unsqueeze(1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x0 = torch.randn(len(t), 16, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), 16, generator=gen, dtype=torch.float64)
    xt = a * x0 + s * eps
    eps_hat = eps + 0.3 * torch.randn(len(t), 16, generator=gen, dtype=torch.float64)
    x0_hat = (xt - s * eps_hat) / a
    v, v_hat = a * eps - s * x0, a * eps_hat - s * x0_hat
    mse = {
        "epsilon": ((eps_hat - eps) ** 2).mean(1),
        "v": ((v_hat - v) ** 2).mean(1),
        "sample": ((x0_hat - x0) ** 2).mean(1),
    }
    return mse, schedule.snr[t]


def kdiffusion_soft_min_snr_x0_loss(snr: torch.Tensor, x0_mse: torch.Tensor, sigma_data: float):
    """k-diffusion's Denoiser loss with weighting 'soft-min-snr', in its VE form.

    weight (sigma sd)^2 / (sigma^2 + sd^2)^2 on |F - target|^2 = |D - x0|^2 / c_out^2,
    c_out = sigma sd / sqrt(sigma^2 + sd^2), sigma^2 = 1 / SNR.
    """
    sigma2 = 1.0 / snr
    weight = sigma2 * sigma_data**2 / (sigma2 + sigma_data**2) ** 2
    c_out2 = sigma2 * sigma_data**2 / (sigma2 + sigma_data**2)
    return weight * x0_mse / c_out2


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_weights_reproduce_each_papers_objective(prediction: str) -> None:
    schedule = NoiseSchedule.from_name("linear", 1000)
    t = torch.tensor([0, 10, 100, 300, 500, 700, 999])
    mse, snr = losses_in_every_space(schedule, t)
    ours = {
        spec: build_weighting(spec, prediction)(snr) * mse[prediction]
        for spec in ["min-snr:5", "p2:gamma=0.5,k=1", "soft-min-snr:4", "constant", "debiased"]
    }
    # Debiased estimation (Yu et al. 2023; kohya's apply_debiased_estimation): 1/sqrt(SNR) on
    # the eps error, SNR capped at 1000
    expected = mse["epsilon"] / snr.clamp(max=1000).sqrt()
    torch.testing.assert_close(ours["debiased"], expected)
    # Min-SNR (Hang et al. 2023): min(SNR, gamma) on the x0 error
    torch.testing.assert_close(ours["min-snr:5"], torch.clamp(snr, max=5.0) * mse["sample"])
    # P2 (Choi et al. 2022): 1 / (k + SNR)^gamma on the eps error
    torch.testing.assert_close(ours["p2:gamma=0.5,k=1"], mse["epsilon"] / (1 + snr) ** 0.5)
    # soft-min-SNR: k-diffusion with sigma_data = 0.5 is gamma = 1 / 0.5^2 = 4
    expected = kdiffusion_soft_min_snr_x0_loss(snr, mse["sample"], sigma_data=0.5)
    torch.testing.assert_close(ours["soft-min-snr:4"], expected)
    torch.testing.assert_close(ours["constant"], mse[prediction])


def test_matches_diffusers_training_script_min_snr() -> None:
    """diffusers' examples: stack([snr, gamma]).min / snr (eps) or / (snr + 1) (v)."""
    snr = NoiseSchedule.from_name("scaled-linear", 1000).snr
    base = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(build_weighting("min-snr", "epsilon")(snr), base / snr)
    torch.testing.assert_close(build_weighting("min-snr", "v")(snr), base / (snr + 1))


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled-linear"])
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize(
    "spec", ["constant", "min-snr", "soft-min-snr", "p2", "p2:gamma=0.5,k=2", "debiased"]
)
def test_zero_terminal_snr_is_finite(name: str, prediction: str, spec: str) -> None:
    schedule = NoiseSchedule.from_name(name, 1000, zero_terminal_snr=True)
    assert schedule.snr[-1] == 0
    table = build_weighting(spec, prediction).precompute(schedule)
    assert table.shape == (1000,) and torch.isfinite(table).all() and (table >= 0).all()
    # the value at SNR = 0 is the limit SNR -> 0+
    limit = build_weighting(spec, prediction)(torch.tensor([1e-12], dtype=torch.float64))
    torch.testing.assert_close(table[-1:], limit, rtol=1e-6, atol=1e-9)


def test_spec_parsing_and_errors() -> None:
    assert build_weighting("min-snr").params == {"gamma": 5.0}
    assert build_weighting("min-snr:3").params == {"gamma": 3.0}
    assert build_weighting("p2:k=2").params == {"gamma": 1.0, "k": 2.0}
    assert str(build_weighting("p2:gamma=0.5,k=1", "v")) == "p2:gamma=0.5,k=1"
    assert build_weighting("soft-min-snr", "epsilon").prediction == "epsilon"
    # positional values are the declared parameters in order: both spellings give one object
    assert build_weighting("p2:0.5,2") == build_weighting("p2:gamma=0.5,k=2")
    assert build_weighting("p2:0.5,k=2") == build_weighting("p2:k=2,gamma=0.5")
    assert build_weighting("edm2:lr=0.01").learned and not build_weighting("min-snr").learned
    for bad, match in [
        ("max-snr", "unknown loss weighting"),
        ("min-snr:beta=2", r"unknown option\(s\) beta; valid: gamma"),
        ("min-snr:gamma=x", "must be a number"),
        ("min-snr:0", r"gamma must be a number in \(0, 10000\], got '0'"),
        ("p2:k=0", r"k must be a number in \[0.01, 100\]"),
        ("p2:gamma=1e308", r"weighting p2: gamma must be a number in \(0, 10\]"),
        ("p2:1,2,3", "takes at most 2 parameter"),
        ("min-snr:gamma=5,gamma=1", "gamma is given twice"),
        ("min-snr:gamma=nan", "gamma must be a number"),
        ("debiased:max_snr=1e-300", r"max_snr must be a number in \[0.001, 1000000\]"),
        ("edm2:lr=inf", r"lr must be a number in \[0, 1\]"),
        ("constant:1", "takes no parameters"),
    ]:
        with pytest.raises(AntError, match=match):
            build_weighting(bad)
    with pytest.raises(AntError, match="unknown prediction"):
        build_weighting("min-snr", "score")
    with pytest.raises(AntError, match=">= 0"):
        build_weighting("min-snr")(torch.tensor([-1.0]))

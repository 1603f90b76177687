"""The baselines practitioners use today, against their papers' formulas: EDM2's learned
weighting, SD3's logit-normal and mode timestep sampling, Improved DDPM's loss-aware sampling
with importance weights; each trains, resumes exactly and equals one process under torchrun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff import checkpoint
from antdiff.cli import main
from antdiff.diffusion import LearnedWeighting, NoiseSchedule, sample_weighting
from antdiff.tasks import IntervalPartition, LossAwareSampler, build_timestep_sampler
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

T = 1000
PART = IntervalPartition.uniform(T, 5)


# ----------------------------------------------------------------------------- EDM2 weighting
def test_edm2_starts_from_the_plain_loss_and_learns_log_e_loss() -> None:
    schedule = NoiseSchedule.from_name("linear", T)
    w = sample_weighting("edm2", "epsilon", schedule)
    assert isinstance(w, LearnedWeighting)
    t = torch.tensor([0, 100, 500, 999])
    losses = torch.tensor([0.3, 1.2, 0.01, 2.0])
    torch.testing.assert_close(w(losses, t), losses)  # u = 0 at initialisation
    # at the optimum of E[exp(-u) L + u], u(sigma) = log E[L | sigma] (d/du = 0)
    ts = torch.tensor([3, 150, 400, 700, 990])
    mean = torch.tensor([0.25, 0.08, 0.02, 0.004, 0.0005])  # E[L | t]
    opt = torch.optim.Adam(w.param_groups()[0]["params"], lr=0.01)
    for _ in range(5000):  # the objective is linear in L: its expectation is w(E[L | t], t)
        loss = w(mean, ts).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        torch.testing.assert_close(w.log_variance(ts), mean.log(), atol=0.02, rtol=0)


def test_edm2_features_follow_c_noise() -> None:
    """c_noise = ln(sigma) / 4 with sigma = 1 / sqrt(SNR): features are cos(c f + p) sqrt 2."""
    schedule = NoiseSchedule.from_name("cosine", T)
    w = LearnedWeighting(torch.ones(T), schedule.log_snr, channels=8, seed=3)
    sigma = 1 / schedule.snr.sqrt()
    g = torch.Generator().manual_seed(3)
    freqs = 2 * math.pi * torch.randn(8, generator=g, dtype=torch.float64)
    phases = 2 * math.pi * torch.rand(8, generator=g, dtype=torch.float64)
    expected = torch.cos(sigma.log()[:, None] / 4 * freqs + phases) * math.sqrt(2)
    torch.testing.assert_close(w.features, expected.float(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- samplers
def histogram(spec: str, n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    sampler = build_timestep_sampler(spec, PART)
    t, task = sampler.sample(n, torch.Generator().manual_seed(seed))
    assert torch.equal(task, PART.task_of(t))
    return np.bincount(t.numpy(), minlength=T) / n, sampler.density()


@pytest.mark.parametrize(
    "spec",
    ["logit-normal:0,1", "logit-normal:0.5,0.8", "mode:1.29", "mode:0", "stratified", "uniform"],
)
def test_density_matches_the_draws(spec: str) -> None:
    hist, density = histogram(spec)
    bins = lambda p: p.reshape(20, -1).sum(1)  # noqa: E731
    assert density.shape == (T,) and density.sum() == pytest.approx(1.0)
    assert 0.5 * np.abs(bins(hist) - bins(density)).sum() < 0.01  # total variation, 20 bins


def test_logit_normal_and_mode_are_sd3s() -> None:
    """The densities equal those of numpy re-implementations of diffusers' formulas."""
    n, rng = 200_000, np.random.default_rng(0)
    u = rng.normal(0.3, 0.7, n)
    logit_normal = np.minimum(np.floor(T / (1 + np.exp(-u))), T - 1)
    u = rng.random(n)
    mode = np.clip(np.floor(T * (1 - u - 1.29 * (np.cos(np.pi * u / 2) ** 2 - 1 + u))), 0, T - 1)
    for spec, t in (("logit-normal:0.3,0.7", logit_normal), ("mode:1.29", mode)):
        ref = np.bincount(t.astype(int) * 20 // T, minlength=20) / n
        ours = build_timestep_sampler(spec, PART).density().reshape(20, -1).sum(1)
        assert 0.5 * np.abs(ref - ours).sum() < 0.01, spec


def test_loss_aware_is_uniform_until_full_then_unbiased() -> None:
    s = LossAwareSampler(PART, history=2)
    assert s.probabilities().tolist() == [1 / T] * T and s.importance(torch.arange(3)).eq(1).all()
    loss = torch.linspace(0.01, 3.0, T, dtype=torch.float64) ** 2  # L_t, one value per t
    t = torch.arange(T)
    s.after_step(t, loss + 5, torch.ones(PART.k))  # older: pushed out by the next two
    s.after_step(torch.cat([t, t]), torch.cat([loss, loss]), torch.ones(PART.k))
    p = s.probabilities()
    expected = loss / loss.sum() * (1 - s.UNIFORM) + s.UNIFORM / T  # sqrt(E[L^2]) = L
    torch.testing.assert_close(p, expected)
    draws, task = s.sample(400_000, torch.Generator().manual_seed(1))
    weighted = s.importance(draws).double() * loss[draws]
    for k, (lo, hi) in enumerate(PART.intervals):  # each task's mean: its interval's uniform one
        mean = float(weighted[task == k].mean())
        assert mean == pytest.approx(float(loss[lo : hi + 1].mean()), rel=0.02), k
    one = LossAwareSampler(IntervalPartition.uniform(T, 1), history=2)  # one task: 1 / (T p_t)
    one.load_state_dict(s.state_dict())
    torch.testing.assert_close(one.importance(draws), (1 / (T * p[draws])).float())
    assert float((one.importance(draws).double() * loss[draws]).mean()) == pytest.approx(
        float(loss.mean()), rel=0.01
    )
    state = s.state_dict()
    other = LossAwareSampler(PART, history=2)
    other.load_state_dict(state)
    torch.testing.assert_close(other.probabilities(), p)


# ----------------------------------------------------------------------------- training
FAST = [
    "--dataset",
    "digits",
    "--batch-size",
    "16",
    "--num-samples",
    "4",
    "--sample-steps",
    "2",
    "--log-every",
    "5",
]
TOY = [
    "--dataset",
    "toy:gaussians8",
    "--model",
    "mlp",
    "--batch-size",
    "64",
    "--num-samples",
    "8",
    "--sample-steps",
    "4",
    "--log-every",
    "5",
]
BASELINES = {
    "edm2": ["--method", "edm2"],
    "logit-normal": [
        "--method",
        "mean",
        "--clusters",
        "timestep:1",
        "--timestep-sampling",
        "logit-normal:0,1",
    ],
    "mode": ["--method", "mean", "--clusters", "timestep:1", "--timestep-sampling", "mode:1.29"],
    "loss-aware": [
        "--method",
        "mean",
        "--clusters",
        "timestep:1",
        "--timestep-sampling",
        "loss-aware:1",
    ],
    "debiased": ["--method", "debiased"],
    "sample": ["--method", "vanilla", "--prediction", "sample"],
    "uw-loss-aware-edm2": [
        "--method",
        "uw",
        "--timestep-sampling",
        "loss-aware:1",
        "--weighting",
        "edm2",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("data", ["digits", "toy"])
def test_each_baseline_trains(tmp_path: Path, name: str, data: str) -> None:
    flags = FAST if data == "digits" else TOY
    run = tmp_path / "r"
    assert main(["train", *flags, *BASELINES[name], "--steps", "10", "--out", str(run)]) == 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    batch = 16 if data == "digits" else 64
    assert rows[-1]["step"] == 10 and sum(rows[-1]["t_hist"]) == 5 * batch  # drawn since the last
    assert all(torch.isfinite(v).all() for v in final_weights(run).values())
    assert "Timestep sampling" in (run / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edm2", "loss-aware"])
def test_resume_is_exact_with_the_baselines_state(tmp_path: Path, name: str) -> None:
    """EDM2's u network and the loss-aware history are checkpointed: stop at step 10 (a
    finished run), continue to 20 (as a kill after the checkpoint would), equal to 20 at once."""
    flags = [*FAST, *BASELINES[name], "--checkpoint-every", "5"]
    assert main(["train", *flags, "--steps", "20", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *flags, "--steps", "10", "--out", str(tmp_path / "cut")]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--steps", "20"]) == 0
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(checkpoint.latest(tmp_path / "whole") / "state.pt", weights_only=True)
    sb = torch.load(checkpoint.latest(tmp_path / "cut") / "state.pt", weights_only=True)
    for key in ("weighting", "sampler"):
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    """EDM2's u gradients are averaged over ranks (its network is outside DDP); the loss-aware
    history is fed the global batch's losses on every rank."""
    argv = [
        *FAST,
        *BASELINES["uw-loss-aware-edm2"],
        "--steps",
        "8",
        "--checkpoint-every",
        "8",
        "--batch-size",
        "15",
        f"--model-options={json.dumps(NO_ATTENTION)}",
    ]
    assert main(["train", *argv, "--out", str(tmp_path / "one")]) == 0
    train_two_processes(argv, tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    sa, sb = (
        torch.load(checkpoint.latest(tmp_path / r) / "state.pt", weights_only=True)
        for r in ("one", "two")
    )
    torch.testing.assert_close(
        sa["weighting"]["linear.weight"], sb["weighting"]["linear.weight"], rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(
        sa["sampler"]["losses"], sb["sampler"]["losses"], rtol=1e-4, atol=1e-8
    )

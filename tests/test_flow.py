"""Flow matching (`--objective flow`): the path, target and conditioning against their formulas,
the flow log-SNR cost, diffusers' Euler and Heun schedulers against the exact ODE solution on
Gaussian data, the SD3 weightings, config refusals, and runs that train (every method and
clustering), resume exactly, run under torchrun equal to one process, export and sample from
the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from antdiff.api import train
from antdiff.cli import main
from antdiff.config import make_config
from antdiff.diffusion import FlowPath, build_weighting, generate, per_sample_loss
from antdiff.errors import AntError
from antdiff.export import load_exported, sample_exported
from antdiff.tasks import cluster_timesteps
from antdiff.tasks.clustering import median_cost
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

FAST = {
    "dataset": "digits",
    "objective": "flow",
    "batch_size": 16,
    "num_samples": 4,
    "sample_steps": 2,
    "log_every": 5,
    "checkpoint_every": 10,
}


def test_path_target_and_conditioning_follow_the_formulas() -> None:
    path = FlowPath(1000, shift=3.0)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    frac = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.1, 0.999], dtype=torch.float64)
    u = (t.double() + frac) / 1000
    sigma = 3 * u / (1 + 2 * u)  # SD3's shift, Esser et al. 2024, Eq. 23
    torch.testing.assert_close(path.sigma(t, frac), sigma)
    centre = (t.double() + 0.5) / 1000
    torch.testing.assert_close(path.sigma(t), 3 * centre / (1 + 2 * centre))
    s = sigma.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(path.noisy(x0, t, noise, frac), (1 - s) * x0 + s * noise)
    seen = {}

    def oracle(xt: torch.Tensor, time: torch.Tensor, y=None) -> torch.Tensor:
        seen["time"] = time
        return noise - x0  # the velocity target eps - x0

    loss = per_sample_loss(oracle, x0, t, noise, path, prediction="velocity", frac=frac)
    assert torch.equal(loss, torch.zeros(6))
    torch.testing.assert_close(seen["time"], (sigma * 1000).float())  # diffusers: sigma * T
    wrong = per_sample_loss(lambda *a: x0 - noise, x0, t, noise, path, prediction="velocity")
    torch.testing.assert_close(wrong, 4 * (noise - x0).square().flatten(1).mean(1))
    with pytest.raises(AntError, match="flow matching predicts the velocity"):
        per_sample_loss(oracle, x0, t, noise, path, prediction="epsilon")


def test_flow_snr_and_the_log_snr_cost() -> None:
    path = FlowPath(40, shift=2.0)
    sigma = path.sigmas
    torch.testing.assert_close(path.snr, ((1 - sigma) / sigma) ** 2)
    torch.testing.assert_close(path.log_snr, 2 * torch.log((1 - sigma) / sigma))
    assert bool((path.log_snr[1:] < path.log_snr[:-1]).all())  # falls with t, as DDPM's
    C = median_cost(path.log_snr.numpy())
    found = cluster_timesteps("log-snr", 4, path)
    v = path.log_snr.numpy()
    direct = sum(
        np.abs(v[l : r + 1] - np.median(v[l : r + 1])).sum() for l, r in found.partition.intervals
    )
    assert found.total == pytest.approx(direct)
    best = min(  # exhaustive search over the cuts of 40 bins into 4 intervals
        C[0, a - 1] + C[a, b - 1] + C[b, c - 1] + C[c, 39]
        for a in range(1, 38)
        for b in range(a + 1, 39)
        for c in range(b + 1, 40)
    )
    assert found.total == pytest.approx(best)


class ExactVelocity(nn.Module):
    """The exact velocity E[eps - x0 | x_sigma = x] for data N(mu, s^2) per coordinate: x_sigma
    ~ N((1 - sigma) mu, (1 - sigma)^2 s^2 + sigma^2), Cov(eps - x0, x_sigma) = sigma -
    (1 - sigma) s^2. Its ODE maps the noise z at sigma = 1 to mu + s z at sigma = 0."""

    def __init__(self, mu: float, s: float, T: int) -> None:
        super().__init__()
        self.mu, self.s, self.T = mu, s, T

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        sig = (t.double() / self.T).view(-1, 1)
        var = (1 - sig) ** 2 * self.s**2 + sig**2
        slope = (sig - (1 - sig) * self.s**2) / var
        return (-self.mu + slope * (x.double() - (1 - sig) * self.mu)).float()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_diffusers_euler_and_heun_solve_the_gaussian_ode(shift: float) -> None:
    mu, s = 1.5, 0.4
    model, path = ExactVelocity(mu, s, 1000), FlowPath(1000, shift)
    z = torch.randn((256, 4), generator=torch.Generator().manual_seed(0))

    def error(sampler: str, steps: int) -> float:
        g = torch.Generator().manual_seed(0)  # the same initial noise z
        x = generate(model, path, 256, (4,), sampler=sampler, steps=steps, generator=g)
        return float((x - (mu + s * z)).abs().max())

    e50, e200 = error("euler", 50), error("euler", 200)
    assert e200 < 0.05 and e50 / e200 > 3.0  # first order: 4x steps, about 4x smaller error
    h25, h50 = error("heun", 25), error("heun", 50)
    assert h50 < 2e-3 and h25 / h50 > 3.0  # second order: 2x steps, about 4x smaller error


def test_sd3_weightings_and_the_velocity_conversion() -> None:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    path = FlowPath(1000, shift=3.0)
    sigma = path.sigmas
    for ours, theirs in (("sigma-sqrt", "sigma_sqrt"), ("cosmap", "cosmap")):
        table = build_weighting(ours, "velocity").precompute(path)
        reference = compute_loss_weighting_for_sd3(theirs, sigma).double()
        torch.testing.assert_close(table, reference, rtol=1e-6, atol=0)
    # w_velocity |v - v_hat|^2 = w_x0 |x0 - x0_hat|^2 with x0 = x_t - sigma v
    snr = path.snr
    for name in ("min-snr", "soft-min-snr", "p2", "debiased"):
        w_v = build_weighting(name, "velocity").precompute(path)
        w_x0 = build_weighting(name, "sample").precompute(path)
        torch.testing.assert_close(w_v, w_x0 * sigma**2)
    torch.testing.assert_close(sigma, 1 / (1 + snr.sqrt()))
    with pytest.raises(AntError, match="flow matching's"):
        build_weighting("cosmap", "epsilon")


@pytest.mark.parametrize(
    "over, message",
    [
        ({"sampler": "ddim"}, "unknown sampler 'ddim' for --objective flow"),
        ({"prediction": "epsilon"}, "unknown prediction 'epsilon' for --objective flow"),
        ({"schedule": "cosine"}, "flow matching's is --flow-shift"),
        ({"flow_shift": 0.0}, "flow_shift must be a finite number > 0"),
        ({"objective": "ddpm", "flow_shift": 3.0}, "use it with --objective flow"),
        ({"objective": "ddpm", "prediction": "velocity"}, "unknown prediction 'velocity'"),
        ({"objective": "rectified"}, "unknown objective 'rectified'"),
        ({"weighting": "cosmap", "objective": "ddpm"}, "flow matching's"),
    ],
)
def test_bad_flow_settings_are_refused(over: dict, message: str) -> None:
    with pytest.raises(AntError, match=message):
        make_config({**FAST, **over})


def test_flow_defaults() -> None:
    cfg = make_config({"objective": "flow"})
    assert (cfg.prediction, cfg.sampler) == ("velocity", "euler")


@pytest.mark.slow
def test_flow_run_trains_evaluates_exports_and_samples_from_the_export(tmp_path: Path) -> None:
    over = {
        "steps": 10,
        "method": "uw",
        "clusters": "log-snr:3",
        "weighting": "cosmap",
        "flow_shift": 2.0,
        "out": str(tmp_path / "run"),
    }
    cfg = make_config({**FAST, **over})
    run = train(cfg)
    assert main(["evaluate", "--run", str(run.path), "--num", "130", "--steps", "4"]) == 0
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert len(metrics["heldout"]["intervals"]) == 3
    assert main(["affinity", "--run", str(run.path), "--bins", "4", "--probe", "8"]) == 0
    out = tmp_path / "export"
    assert main(["export", "--run", str(run.path), "--out", str(out)]) == 0
    _, scheduler, info = load_exported(out)
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert scheduler.config.shift == 2.0 and info["prediction"] == "velocity"
    x = sample_exported(out, 3, steps=4, generator=torch.Generator().manual_seed(5))
    from antdiff import build
    from antdiff.rundir import RunDir

    opened = RunDir.open(run.path)
    direct = generate(
        build.trained_model(opened),
        build.schedule(opened.cfg),
        3,
        (1, 8, 8),
        steps=4,
        generator=torch.Generator().manual_seed(5),
        prediction="velocity",
        clip_sample=True,
    )
    torch.testing.assert_close(x, direct)
    assert main(["sample", "--run", str(out), "--num", "2", "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.slow
def test_flow_resume_is_exact(tmp_path: Path) -> None:
    over = {
        "method": "uw",
        "clusters": "affinity:3:auto",
        "affinity_warmup": 4,
        "steps": 12,
        "affinity_bins": 6,
        "affinity_probe": 8,
        "checkpoint_every": 3,
    }
    whole = train(make_config({**FAST, **over, "out": str(tmp_path / "whole")})).path
    cut = tmp_path / "cut"
    train(make_config({**FAST, **over, "steps": 6, "out": str(cut)}))
    train(make_config({**FAST, **over, "out": str(cut)}), resume=True)
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_flow_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    flags = {
        **FAST,
        "method": "uw",
        "clusters": "affinity:3:auto",
        "affinity_warmup": 3,
        "affinity_bins": 6,
        "affinity_probe": 8,
        "steps": 6,
        "batch_size": 15,
        "checkpoint_every": 6,
        "num_samples": 2,
        "model_options": NO_ATTENTION,
    }
    argv = [
        f"--{k.replace('_', '-')}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in flags.items()
    ]
    one = train(make_config({**flags, "out": str(tmp_path / "one")})).path
    train_two_processes(argv, tmp_path / "two")
    assert_same_weights(one, tmp_path / "two")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "clusters"),
    [
        ("vanilla", None),
        ("min-snr", None),
        ("p2", None),
        ("edm2", None),
        ("mean", "timestep:3"),
        ("uw", "snr:3"),
        ("pcgrad", "timestep:3"),
        ("nash", "log-snr:3"),
        ("famo", "timestep:3"),
        ("torchjd:UPGrad", "log-snr:3"),
    ],
)
def test_every_method_and_clustering_trains_on_flow(tmp_path: Path, method: str, clusters) -> None:
    """The MTL methods and weightings are objective-agnostic: each trains on the flow loss,
    its task losses finite, over intervals of the flow path's t bins."""
    if method.startswith("torchjd"):
        pytest.importorskip("torchjd")
    over = {
        "steps": 3,
        "method": method,
        "num_samples": 1,
        "log_every": 1,
        "out": str(tmp_path / "run"),
    }
    if clusters:
        over["clusters"] = clusters
    run = train(make_config({**FAST, **over}))
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(r["loss"]) for r in losses)

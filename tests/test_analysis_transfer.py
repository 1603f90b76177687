"""Negative transfer (O2): the mixture denoiser switches model by t, specialists train on their
interval only, the experiment runs end to end on a 2-D toy, bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from antdiff.analysis.transfer import MixtureDenoiser, TransferPlan, parse_intervals, run_transfer
from antdiff.build import load_data
from antdiff.cli import main
from antdiff.config import make_config
from antdiff.diffusion import NoiseSchedule, generate
from antdiff.errors import AntError
from antdiff.tasks import IntervalPartition, RangeSampler
from antdiff.train import draw_batch


class Recorder(nn.Module):
    """A dummy denoiser: predicts the constant `value` and records the timesteps it saw."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        self.seen += torch.as_tensor(t).reshape(-1).tolist()
        return torch.full_like(x, float(self.value.detach()))


def test_mixture_picks_the_model_per_sample() -> None:
    gen, spec = Recorder(1.0), Recorder(2.0)
    mix = MixtureDenoiser(gen, spec, (200, 399))
    t = torch.tensor([0, 199, 200, 300, 399, 400, 999])
    out = mix(torch.zeros(7, 2), t)
    assert out[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    assert sorted(spec.seen) == [200, 300, 399] and sorted(gen.seen) == [0, 199, 400, 999]


def test_mixture_inside_the_reverse_loop() -> None:
    gen, spec = Recorder(0.0), Recorder(0.0)
    mix = MixtureDenoiser(gen, spec, (400, 599))
    schedule = NoiseSchedule.from_name("linear", 1000)
    generate(mix, schedule, 3, (2,), sampler="ddim", steps=20)
    assert spec.seen and gen.seen
    assert all(400 <= t <= 599 for t in spec.seen)
    assert all(not 400 <= t <= 599 for t in gen.seen)
    assert len(set(spec.seen) | set(gen.seen)) == 20  # every step went to exactly one model


def test_parse_intervals() -> None:
    cfg = make_config({})
    assert parse_intervals("timestep:4", cfg).intervals[1] == (250, 499)
    assert parse_intervals("0:99,100:999", cfg).intervals == ((0, 99), (100, 999))
    for bad in ("0:99,150:999", "0:99,100:998", "1:999", "0-99", "timestep:0"):
        with pytest.raises(AntError):
            parse_intervals(bad, cfg)


def _plan(tmp_path: Path, **over) -> TransferPlan:
    base = {
        "dataset": "toy:gaussians8",
        "model": "mlp",
        "steps": 4,
        "batch_size": 32,
        "lr": 1e-2,
        "holdout": 200,
        "model_options": {"hidden": 32, "depth": 2},
    }
    kw = {
        "intervals": "timestep:2",
        "seeds": [0, 1],
        "out": str(tmp_path / "tr"),
        "num_samples": 64,
        "sample_steps": 3,
        "per_interval": 8,
    }
    return TransferPlan(base, **{**kw, **over})


def test_specialist_configs_and_budgets(tmp_path: Path) -> None:
    plan = _plan(tmp_path, intervals="0:99,100:999", budget="samples")
    assert [plan.specialist_steps(j) for j in range(2)] == [1, 4]  # 4 * 100/1000 -> >= 1
    spec = plan.config(0, 1)
    assert spec.timestep_range == "100:999" and spec.method == "mean" and spec.steps == 4
    data, _ = load_data(spec)
    sampler = RangeSampler((100, 999), IntervalPartition.uniform(1000, 1))
    t = torch.cat([draw_batch(spec, len(data), (2,), sampler, s).t for s in range(20)])
    assert t.min() >= 100 and t.max() <= 999 and t.unique().numel() > 100
    gen = plan.config(0, None)
    assert gen.timestep_range is None and gen.timestep_sampling == "uniform" and gen.steps == 4
    uw = _plan(tmp_path, method="uw").config(1, None)
    assert uw.method == "uw" and uw.clusters == "timestep:2"
    assert uw.timestep_sampling == "stratified"
    assert uw.seed == 1
    with pytest.raises(AntError, match="cluster spec"):
        _plan(tmp_path, intervals="0:99,100:999", method="uw")


@pytest.mark.slow
def test_transfer_end_to_end_on_a_toy(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    result = run_transfer(plan)
    out = Path(plan.out)
    saved = json.loads((out / "transfer.json").read_text())
    keys = {
        "settings",
        "intervals",
        "seeds",
        "metric",
        "generalist_steps",
        "specialist_steps",
        "generalist",
        "mixture",
        "ntg",
        "heldout_generalist",
        "heldout_specialist",
        "heldout_gap",
        "heldout_gap_pct",
        "runs",
        "time_s",
    }
    assert keys <= saved.keys() and saved["metric"] == "swd"
    assert saved["intervals"] == [[0, 499], [500, 999]] and saved["seeds"] == [0, 1]
    ntg = np.array(saved["ntg"]["per_seed"])
    expected = np.array(saved["mixture"]) - np.array(saved["generalist"])[:, None]
    np.testing.assert_allclose(ntg, expected)
    np.testing.assert_allclose(saved["ntg"]["mean"], expected.mean(0))
    np.testing.assert_allclose(saved["ntg"]["std"], expected.std(0, ddof=1))
    gap = np.array(saved["heldout_specialist"]) - np.array(saved["heldout_generalist"])
    np.testing.assert_allclose(saved["heldout_gap"]["per_seed"], gap, atol=1e-12)
    pct = 100 * (np.array(saved["heldout_specialist"]) / np.array(saved["heldout_generalist"]) - 1)
    np.testing.assert_allclose(saved["heldout_gap_pct"]["per_seed"], pct)
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    assert "Negative transfer (O2)" in (out / "report.html").read_text()
    assert result["runs"]["0"][0] == str(out / "seed0" / "generalist-vanilla-4")
    first = saved["mixture"]
    weights = out / "seed0" / "generalist-vanilla-4" / "checkpoints" / "step_0000004"
    stamp = (weights / "model.safetensors").stat().st_mtime_ns
    run_transfer(plan)  # finished runs are reused (not retrained), the numbers reproducible
    assert json.loads((out / "transfer.json").read_text())["mixture"] == first
    assert (weights / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(AntError, match="another config"):
        run_transfer(_other_lr(plan))


def _other_lr(plan: TransferPlan) -> TransferPlan:
    return TransferPlan(
        {**plan.base, "lr": 0.5},
        intervals=plan.intervals,
        seeds=plan.seeds,
        out=plan.out,
        num_samples=64,
        sample_steps=3,
        per_interval=8,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--intervals 0:99,150:999", "not contiguous"),
        ("--intervals 0:99,100:500", "end at 999"),
        ("--seeds 0", "--seeds must be >= 1"),
        ("--num-samples 50", "--num-samples must exceed 128"),
        ("--dataset toy:nope", "unknown"),
        ("--steps 0", "steps must be >= 1"),
    ],
)
def test_bad_transfer_input_is_one_line_exit_2(tmp_path: Path, argv, message, capsys) -> None:
    code = main(["transfer", *argv.split(), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "seed0").exists()  # nothing was trained

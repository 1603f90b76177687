"""Guidance limited to an interval of noise levels (Kynkaanniemi et al. 2024): the whole range is
plain guidance, an interval holding no step is g = 1, and the steps inside are plain guidance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from antdiff.cli import main
from antdiff.diffusion import FlowPath, NoiseSchedule
from antdiff.diffusion.guidance import check_guidance_interval, parse_guidance_interval
from antdiff.diffusion.samplers import generate, make_scheduler
from antdiff.errors import AntError

LABELS = torch.tensor([0, 1, 2, 3, 1, 2])


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000)


def run(model: nn.Module, schedule, g: float, **kw) -> torch.Tensor:
    return generate(
        model,
        schedule,
        6,
        (2,),
        sampler=kw.pop("sampler", "ddim"),
        steps=kw.pop("steps", 6),
        guidance=g,
        labels=LABELS,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )


class IntervalReference(nn.Module):
    """Guidance written out as a plain conditional model: u + g (c - u) where lo <= t/T <= hi,
    the conditional prediction elsewhere."""

    def __init__(self, model: nn.Module, g: float, lo: float, hi: float, total: int):
        super().__init__()
        self.model, self.g, self.lo, self.hi, self.total = model, g, lo, hi, total
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = self.model(x, t, y)
        if not self.lo <= float(t[0]) / self.total <= self.hi:
            return cond
        uncond = self.model(x, t, torch.full_like(y, self.num_classes))
        return uncond + self.g * (cond - uncond)


def test_the_whole_range_is_plain_guidance_bit_for_bit(schedule, cond_mlp) -> None:
    plain = run(cond_mlp, schedule, 3.0)
    assert torch.equal(run(cond_mlp, schedule, 3.0, guidance_interval=(0.0, 1.0)), plain)
    assert torch.equal(run(cond_mlp, schedule, 3.0, guidance_interval=[0, 1]), plain)
    assert not torch.allclose(plain, run(cond_mlp, schedule, 1.0))  # guidance matters here
    flow = FlowPath(1000, 3.0)  # the first flow step is sigma = 1: the end of the range
    for sampler in ("euler", "heun"):
        a = run(cond_mlp, flow, 2.0, sampler=sampler, steps=5)
        b = run(cond_mlp, flow, 2.0, sampler=sampler, steps=5, guidance_interval=(0.0, 1.0))
        c = run(cond_mlp, flow, 2.0, sampler=sampler, steps=5, guidance_interval=(0.0, 0.999))
        assert torch.equal(a, b) and not torch.allclose(a, c)


def test_an_interval_without_steps_is_guidance_one_bit_for_bit(schedule, cond_mlp) -> None:
    scheduler = make_scheduler(schedule, "ddim")
    scheduler.set_timesteps(6)
    fracs = scheduler.timesteps.double() / 1000
    assert not ((fracs >= 0.9) & (fracs <= 1.0)).any()  # premise: no step in [0.9, 1]
    none = run(cond_mlp, schedule, 3.0, guidance_interval=(0.9, 1.0))
    assert torch.equal(none, run(cond_mlp, schedule, 1.0))


@pytest.mark.parametrize("interval", [(0.2, 0.6), (0.0, 0.3), (0.5, 1.0)])
def test_the_steps_inside_are_plain_guidance(schedule, cond_mlp, interval) -> None:
    ref = IntervalReference(cond_mlp, 2.5, *interval, total=1000)
    out = run(cond_mlp, schedule, 2.5, guidance_interval=interval)
    torch.testing.assert_close(out, run(ref, schedule, 1.0))
    assert not torch.allclose(out, run(cond_mlp, schedule, 2.5))  # some steps are unguided
    assert not torch.allclose(out, run(cond_mlp, schedule, 1.0))  # some steps are guided


class Affine(nn.Module):
    """v(x, t, y) = x / 2 + b[y]: a tiny deterministic flow model (label 2 is the null label)."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x / 2 + self.b[y]


def test_two_euler_steps_by_hand() -> None:
    """Flow Euler, 2 steps at sigma s0 = 1 and s1 < 0.5: with [0.5, 1] the first step is guided
    and the second is not; x2 = x1 + (0 - s1) v_c(x1), x1 = x0 + (s1 - s0) v_g(x0)."""
    flow, model, g = FlowPath(1000, 1.0), Affine(), 3.0
    y = torch.tensor([0, 1])
    sched = make_scheduler(flow, "euler")
    sched.set_timesteps(2)
    s0, s1 = (float(s) for s in sched.sigmas[:2])
    assert s0 == 1.0 and s1 < 0.5
    x0 = torch.randn((2, 2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        b = model.b
        v0 = x0 / 2 + b[2] + g * (b[y] - b[2])  # the null label's bias cancels in c - u
        x1 = x0 + (s1 - s0) * v0
        x2 = x1 + (0.0 - s1) * (x1 / 2 + b[y])
    out = generate(
        model,
        flow,
        2,
        (2,),
        sampler="euler",
        steps=2,
        guidance=g,
        labels=y,
        generator=torch.Generator().manual_seed(7),
        guidance_interval=(0.5, 1.0),
    )
    torch.testing.assert_close(out, x2)


@pytest.mark.parametrize(
    "text", ["0.6,0.2", "0.5,0.5", "-0.1,0.5", "0.2,1.5", "a,b", "0.2", "0.1,0.2,0.3", "nan,1"]
)
def test_bad_intervals_are_refused(text: str) -> None:
    with pytest.raises(AntError, match=r"guidance.interval"):
        parse_guidance_interval(text)


def test_bad_intervals_are_refused_by_the_library(schedule, cond_mlp) -> None:
    for bad in [(0.6, 0.2), (0.0, 2.0), ("x", 1), (0.5,)]:
        with pytest.raises(AntError, match=r"guidance.interval"):
            run(cond_mlp, schedule, 2.0, guidance_interval=bad)
    assert check_guidance_interval(["0.25", 0.5]) == (0.25, 0.5)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_the_cli_refuses_a_bad_interval_in_one_line(tmp_path: Path, command, capsys) -> None:
    argv = [command, "--run", str(tmp_path / "none"), "--guidance-interval", "0.7,0.3"]
    if command == "sample":
        argv += ["--out", str(tmp_path / "s.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0 <= LO < HI <= 1" in err[0]


@pytest.mark.slow
def test_evaluate_records_the_interval(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    flags = ["--dataset", "digits", "--conditional", "--batch-size", "16", "--steps", "2"]
    flags += ["--num-samples", "4", "--sample-steps", "2", "--out", str(run_dir)]
    assert main(["train", *flags]) == 0
    capsys.readouterr()
    ev = ["evaluate", "--run", str(run_dir), "--num", "130", "--steps", "2", "--json"]
    assert main([*ev, "--guidance", "2", "--guidance-interval", "0.2,0.6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["guidance"] == 2.0 and result["guidance_interval"] == [0.2, 0.6]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["guidance_interval"] == [0.2, 0.6]
    assert main([*ev, "--guidance", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["guidance_interval"] == [0.0, 1.0]

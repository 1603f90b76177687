"""The `decrease` timestep sampler: intervals drawn by the predicted decrease w_i sum_j G_ij, and
the engine's Gramian that feeds it."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import binom, chisquare
from torch import nn

from antdiff import checkpoint
from antdiff.cli import main, train_config
from antdiff.errors import AntError
from antdiff.mtl import ant_backward, build_method
from antdiff.tasks import DecreaseSampler, IntervalPartition, build_timestep_sampler
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

_NO_ATTN = json.dumps(NO_ATTENTION)
PART = IntervalPartition.from_bounds([0, 61, 206, 342, 509], 1000)  # unequal widths
BASE = PART.widths.double() / 1000
ALL = torch.arange(1000)  # a batch with every interval in it


def fed(gramian: torch.Tensor, weights: list[float], **options) -> DecreaseSampler:
    """A sampler that has seen exactly one Gramian (decay 0: its average is the last q)."""
    s = DecreaseSampler(PART, decay=0.0, **options)
    s.step_done(ALL, None, torch.tensor(weights), gramian)
    return s


def random_gramian(seed: int, k: int = 5) -> torch.Tensor:
    g = torch.randn(k, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g @ g.T


def test_probabilities_against_a_hand_computed_gramian() -> None:
    gramian = torch.tensor(
        [
            [4.0, 1, -3, 0, 0],
            [1, 2, 0, 0, 0],
            [-3, 0, 9, 0, 0],
            [0, 0, 0, 1, -2],
            [0, 0, 0, -2, 4],
        ]
    )
    # a Gramian (positive semi-definite); row sums 2, 3, 6, -1, 2;
    # times w = (1, 2, 0.5, 1, 2): d = (2, 6, 3, -1, 4); max |d| = 6
    assert bool((torch.linalg.eigvalsh(gramian) > -1e-9).all())
    s = fed(gramian, [1.0, 2.0, 0.5, 1.0, 2.0], floor=0.2, eps=0.05)
    assert torch.allclose(
        s.decrease(gramian, torch.tensor([1.0, 2, 0.5, 1, 2])).float(),
        torch.tensor([2.0, 6, 3, -1, 4]),
    )
    q = torch.tensor([2 / 6, 1, 3 / 6, 0.05, 4 / 6], dtype=torch.float64)  # conflicting: eps
    assert torch.allclose(s.probabilities(), 0.8 * q / q.sum() + 0.2 * BASE)
    assert np.isclose(s.density().sum(), 1.0)
    assert torch.allclose(DecreaseSampler(PART).probabilities(), BASE)  # no Gramian yet


def test_draws_follow_the_probabilities() -> None:
    s = fed(random_gramian(0), [1.0, 2.0, 3.0, 4.0, 10.0], floor=0.1)
    t, task = s.sample(20_000, torch.Generator().manual_seed(0))
    assert torch.equal(task, PART.task_of(t))
    observed = torch.bincount(task, minlength=PART.k).numpy()
    assert chisquare(observed, 20_000 * s.probabilities().numpy()).pvalue > 1e-3
    inside = (t[task == 4] - 509).numpy()  # uniform inside the widest interval (10 bins)
    assert chisquare(np.bincount(inside * 10 // 491, minlength=10)).pvalue > 1e-3


@pytest.mark.parametrize(
    "gramian,weights",
    [
        (random_gramian(1) * 1e30, [1e-12, 1e-12, 1e-12, 1e-12, 1e12]),  # one task dominates
        (-torch.ones(5, 5) + 6e-9 * torch.eye(5), [1.0] * 5),  # no Gramian: every d < 0
        (torch.diag(torch.tensor([1e-20, 1e-20, 1e-20, 1e-20, 1e20])), [1.0] * 5),
    ],
)
def test_floor_holds_at_extremes(gramian: torch.Tensor, weights: list[float]) -> None:
    s = fed(gramian, weights, floor=0.05, eps=0.01)
    p = s.probabilities()
    assert bool(torch.isfinite(p).all()) and np.isclose(float(p.sum()), 1.0)
    assert bool((p >= 0.05 * BASE - 1e-15).all())
    q_min = 0.01 / (0.01 * 4 + 1)  # eps against one task at 1: the least a task can get
    assert bool((p >= 0.95 * q_min).all())
    _, task = s.sample(20_000, torch.Generator().manual_seed(1))
    n0 = int((task == 0).sum())
    lo, hi = binom.ppf([1e-4, 1 - 1e-4], 20_000, float(p[0]))
    assert lo <= n0 <= hi and n0 > 0


def test_average_is_smoothed_per_gramian_and_skips_absent_tasks() -> None:
    s = DecreaseSampler(PART, floor=0.0, decay=0.5, eps=0.01)
    eye = torch.eye(5, dtype=torch.float64)
    s.step_done(ALL, None, torch.ones(5), eye)  # q = 1 everywhere
    s.step_done(ALL, None, torch.ones(5))  # no Gramian this step: the average stays
    assert torch.allclose(s.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    # tasks 0 and 4 only; d = (4, 0, 0, 0, 1) -> q = (1, ., ., ., 0.25)
    s.step_done(torch.tensor([0, 600]), None, torch.tensor([4.0, 1, 1, 1, 1]), eye)
    # bias-corrected: (0.5 * 0.5 * 1 + 0.5 * q) / (1 - 0.5^2); the absent ones keep 1
    q = torch.tensor([(0.25 + 0.5) / 0.75, 1, 1, 1, (0.25 + 0.125) / 0.75], dtype=torch.float64)
    assert torch.allclose(s.probabilities(), q / q.sum())
    assert torch.equal(s.gain_seen, torch.tensor([2, 1, 1, 1, 2]))


def test_a_zero_gramian_teaches_nothing() -> None:
    s = fed(torch.zeros(5, 5), [1.0] * 5)
    assert torch.allclose(s.probabilities(), BASE) and int(s.gain_seen.sum()) == 0


def test_gramians_are_asked_for_every_n_steps() -> None:
    s = build_timestep_sampler("decrease:every=3", PART)
    assert s.needs_gramian and s.follows_method
    assert [i for i in range(10) if s.gramian_due(i)] == [0, 3, 6, 9]
    assert not build_timestep_sampler("follow", PART).gramian_due(0)


def test_state_dict_round_trip_gives_identical_future_draws() -> None:
    a = DecreaseSampler(PART, floor=0.1, decay=0.9, importance=2)
    for i in range(5):
        a.step_done(torch.arange(0, 1000, 7), None, torch.rand(5) + i, random_gramian(i))
    b = DecreaseSampler(PART, floor=0.1, decay=0.9, importance=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.probabilities(), b.probabilities())
    for step in range(3):
        ga, gb = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        ta, ka = a.sample(64, ga)
        tb, kb = b.sample(64, gb)
        assert torch.equal(ta, tb) and torch.equal(ka, kb)
        assert torch.equal(a.shares(ka), b.shares(kb))
        w, g = torch.rand(5), random_gramian(10 + step)
        a.step_done(ta, None, w, g)
        b.step_done(tb, None, w, g)


def test_importance_shares_keep_the_objective() -> None:
    s = fed(random_gramian(3), [1.0, 1.0, 5.0, 20.0, 100.0], floor=0.1, importance=1)
    g = torch.Generator().manual_seed(2)
    shares = torch.stack([s.shares(s.sample(64, g)[1]) for _ in range(4000)])
    se = shares.std(0) / 4000**0.5  # E[shares_k] = base_k; 5 standard errors
    assert bool(((shares.mean(0) - BASE).abs() <= 5 * se + 1e-12).all())
    pure = fed(random_gramian(3), [1.0] * 5, importance=0)
    task = torch.tensor([0, 4, 4, 2])
    assert torch.allclose(pure.shares(task), torch.tensor([0.25, 0, 0.25, 0, 0.5]).double())


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(1)


def _problem() -> tuple[Tiny, torch.Tensor, torch.Tensor, Callable]:
    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randn(12)
    task = torch.tensor([0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 2, 2])
    model = Tiny()

    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        return (model(x[index]) - y[index]).square()

    return model, task, torch.bincount(task, minlength=3), loss_fn


def _hand_gramian(model: Tiny, task: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
    rows = []
    for j in range(3):
        model.zero_grad()
        loss_fn((task == j).nonzero().squeeze(1)).mean().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return (torch.stack(rows) @ torch.stack(rows).T).double()


@pytest.mark.parametrize("name", ["sampled:uw", "uw", "mean", "famo"])
def test_engine_measures_the_gramian_for_loss_methods_with_the_same_update(name: str) -> None:
    model, task, counts, loss_fn = _problem()
    expected = _hand_gramian(model, task, loss_fn)
    grads, infos = [], []
    for gramian in (False, True):
        method = build_method(name, 3)
        if method.takes_shares:
            method.set_shares(counts.double() / 12)
        infos.append(ant_backward(method, loss_fn, task, counts, model, gramian=gramian))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert infos[0].gramian is None
    assert torch.allclose(infos[1].gramian, expected, rtol=1e-5, atol=1e-8)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # the same step either way
    assert torch.allclose(infos[0].task_weights, infos[1].task_weights)


def test_engine_hands_over_a_gradient_methods_own_gramian() -> None:
    model, task, counts, loss_fn = _problem()
    expected = _hand_gramian(model, task, loss_fn)
    method = build_method("sampled:pcgrad", 3, update_every=3)
    seen = []
    for step in range(4):
        method.set_shares(counts.double() / 12)
        asked = step == 2  # between refreshes, asked for: cached weights, a Gramian
        info = ant_backward(method, loss_fn, task, counts, model, gramian=asked)
        seen.append(info.gramian is not None)
        if info.gramian is not None:
            assert torch.allclose(info.gramian, expected, rtol=1e-5, atol=1e-8)
        assert info.refreshed == (step in (0, 3))
    assert seen == [True, False, True, True]


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_timestep_sampler("decrease:1.5", PART),
        lambda: build_timestep_sampler("decrease:0.1,1.0", PART),
        lambda: build_timestep_sampler("decrease:0.1,0.9,3", PART),
        lambda: build_timestep_sampler("decrease:every=0", PART),
        lambda: build_timestep_sampler("decrease:every=2.5", PART),
        lambda: build_timestep_sampler("decrease:eps=0", PART),
        lambda: build_timestep_sampler("decrease:eps=1.5", PART),
        lambda: build_timestep_sampler("decrease:eps=nan", PART),
        lambda: build_timestep_sampler("decrease:0.1,0.9,0,10,0.01,7", PART),
        lambda: DecreaseSampler(PART).after_gramian(ALL, torch.ones(5), torch.ones(4, 4)),
        lambda: DecreaseSampler(PART).after_gramian(ALL, torch.ones(4), torch.ones(5, 5)),
        lambda: DecreaseSampler(PART).load_state_dict(
            DecreaseSampler(PART).state_dict() | {"gain": torch.zeros(2)}
        ),
        lambda: DecreaseSampler(PART).load_state_dict({"ema": torch.zeros(5)}),
    ],
)
def test_bad_input_is_one_clear_line(make) -> None:
    with pytest.raises(AntError) as e:
        make()
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- in the loop
DECREASE = [
    "--dataset=digits",
    "--batch-size=15",
    "--num-samples=2",
    "--sample-steps=2",
    "--log-every=4",
    "--method=sampled:uw",
    "--timestep-sampling=decrease:0.3,0.5,1,3",
]


def _state(run) -> dict:
    return torch.load(checkpoint.latest(run) / "state.pt", weights_only=True)


@pytest.mark.parametrize("method,gramians", [("sampled:uw", 3), ("sampled:pcgrad", 7)])
def test_the_loop_feeds_the_sampler_its_gramians(tmp_path, method: str, gramians: int) -> None:
    """uw: a Gramian on the steps it is due (0, 3, 6 of 7); pcgrad: the one of each refresh."""
    flags = [f for f in DECREASE if not f.startswith("--method=")]
    flags += [f"--method={method}", "--steps=7", f"--out={tmp_path / 'r'}"]
    assert main(["train", *flags]) == 0
    sampler = _state(tmp_path / "r")["sampler"]
    assert int(sampler["seen_gain"].max()) == gramians  # a task in every batch at least
    assert int(sampler["seen"].max()) == 7  # the method's weights, every step
    assert float(sampler["gain"].sum()) > 0


def test_bad_values_on_the_command_line_exit_2(tmp_path, capsys) -> None:
    bad = [*DECREASE[:-1], "--timestep-sampling=decrease:every=0", f"--out={tmp_path / 'r'}"]
    assert main(["train", *bad, "--steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "every" in err and len(err.splitlines()) == 1
    with pytest.raises(AntError, match="sampled:uw"):
        train_config(["--dataset=digits", "--method=uw", "--timestep-sampling=decrease"])


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path) -> None:
    flags = [*DECREASE, "--checkpoint-every=5"]
    assert main(["train", *flags, "--steps=12", f"--out={tmp_path / 'whole'}"]) == 0
    assert main(["train", *flags, "--steps=5", f"--out={tmp_path / 'cut'}"]) == 0
    assert main(["train", "--resume", f"--out={tmp_path / 'cut'}", "--steps=12"]) == 0
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    for key in ("sampler", "method"):
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path) -> None:
    argv = [*DECREASE, "--steps=7", "--checkpoint-every=7", f"--model-options={_NO_ATTN}"]
    assert main(["train", *argv, f"--out={tmp_path / 'one'}"]) == 0
    train_two_processes(argv, tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    sa, sb = _state(tmp_path / "one"), _state(tmp_path / "two")
    for key in ("ema", "gain"):
        torch.testing.assert_close(sa["sampler"][key], sb["sampler"][key], rtol=1e-4, atol=1e-8)
    for key in ("seen", "seen_gain"):
        assert torch.equal(sa["sampler"][key], sb["sampler"][key])

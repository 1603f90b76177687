"""ANT as a sampler: the `follow` timestep sampler and the `sampled:` MTL wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom, chisquare
from torch import nn

from antdiff import checkpoint
from antdiff.cli import main, train_config
from antdiff.errors import AntError
from antdiff.mtl import SampledMethod, UncertaintyWeighting, ant_backward, build_method
from antdiff.tasks import FollowSampler, IntervalPartition, build_timestep_sampler
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

_NO_ATTN = json.dumps(NO_ATTENTION)
PART = IntervalPartition.from_bounds([0, 61, 206, 342, 509], 1000)  # unequal widths


def fed(weights: list[float], floor: float = 0.1, importance: int = 0) -> FollowSampler:
    """A sampler whose average is exactly `weights` (decay 0: the last weights)."""
    s = FollowSampler(PART, floor=floor, decay=0.0, importance=importance)
    s.after_step(torch.arange(1000), None, torch.tensor(weights))
    return s


def test_probabilities_mix_weights_and_floor() -> None:
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    s = fed(w.tolist(), floor=0.2)
    base = PART.widths.double() / 1000
    expected = 0.8 * w.double() / w.sum() + 0.2 * base
    assert torch.allclose(s.probabilities(), expected)
    assert np.isclose(s.density().sum(), 1.0)
    assert FollowSampler(PART).probabilities().allclose(base)  # nothing seen yet: uniform t


def test_draws_follow_the_probabilities() -> None:
    s = fed([1.0, 2.0, 3.0, 4.0, 10.0], floor=0.1)
    t, task = s.sample(20_000, torch.Generator().manual_seed(0))
    assert torch.equal(task, PART.task_of(t))
    observed = torch.bincount(task, minlength=PART.k).numpy()
    assert chisquare(observed, 20_000 * s.probabilities().numpy()).pvalue > 1e-3
    inside = (t[task == 4] - 509).numpy()  # uniform inside the widest interval (10 bins)
    assert chisquare(np.bincount(inside * 10 // 491, minlength=10)).pvalue > 1e-3


def test_floor_holds_under_extreme_weights() -> None:
    s = fed([1e-12, 1e-12, 1e-12, 1e-12, 1e12], floor=0.05)
    p = s.probabilities()
    base = PART.widths.double() / 1000
    assert bool((p >= 0.05 * base - 1e-15).all())
    _, task = s.sample(20_000, torch.Generator().manual_seed(1))
    n0 = int((task == 0).sum())
    lo, hi = binom.ppf([1e-4, 1 - 1e-4], 20_000, float(p[0]))
    assert lo <= n0 <= hi and n0 > 0


def test_average_is_smoothed_and_ignores_absent_tasks() -> None:
    s = FollowSampler(PART, floor=0.0, decay=0.5)
    s.after_step(torch.arange(1000), None, torch.tensor([1.0, 1, 1, 1, 1]))
    s.after_step(torch.tensor([0, 600]), None, torch.tensor([3.0, 0, 0, 0, 3]))  # 1-3 absent
    # bias-corrected: tasks 0 and 4 average (0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.5^2) = 7/3,
    # the absent ones keep their average 1
    w = torch.tensor([7 / 3, 1, 1, 1, 7 / 3], dtype=torch.float64)
    assert torch.allclose(s.probabilities(), w / w.sum())


def test_state_dict_round_trip_gives_identical_future_draws() -> None:
    a = FollowSampler(PART, floor=0.1, decay=0.9)
    for i in range(5):
        a.after_step(torch.arange(0, 1000, 7), None, torch.rand(5) + i)
    b = FollowSampler(PART, floor=0.1, decay=0.9)
    b.load_state_dict(a.state_dict())
    for step in range(3):
        ga, gb = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        ta, ka = a.sample(64, ga)
        tb, kb = b.sample(64, gb)
        assert torch.equal(ta, tb) and torch.equal(ka, kb)
        w = torch.rand(5)
        a.after_step(ta, None, w)
        b.after_step(tb, None, w)


def test_importance_shares_keep_the_objective() -> None:
    s = fed([1.0, 1.0, 5.0, 20.0, 100.0], floor=0.1, importance=1)
    base = PART.widths.double() / 1000
    g = torch.Generator().manual_seed(2)
    shares = torch.stack([s.shares(s.sample(64, g)[1]) for _ in range(4000)])
    # E[shares_k] = E[n_k] / B * base_k / p_k = base_k; 5 standard errors
    se = shares.std(0) / 4000**0.5
    assert bool(((shares.mean(0) - base).abs() <= 5 * se + 1e-12).all())
    # importance 2: E[shares_k] = the method's (normalised) weights, whatever the floor
    own = fed([1.0, 1.0, 5.0, 20.0, 100.0], floor=0.6, importance=2)
    shares = torch.stack([own.shares(own.sample(64, g)[1]) for _ in range(4000)])
    se = shares.std(0) / 4000**0.5
    assert bool(((shares.mean(0) - own.weights()).abs() <= 5 * se + 1e-12).all())
    pure = fed([1.0, 1.0, 5.0, 20.0, 100.0], floor=0.1, importance=0)
    task = torch.tensor([0, 4, 4, 2])
    assert torch.allclose(pure.shares(task), torch.tensor([0.25, 0, 0.25, 0, 0.5]).double())


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(1)


@pytest.mark.parametrize("inner", ["uw", "mean", "famo"])
def test_wrapper_gives_the_plain_mean_and_the_inner_gradient(inner: str) -> None:
    torch.manual_seed(0)
    k, b = 3, 12
    x, y = torch.randn(b, 3), torch.randn(b)
    task = torch.tensor([0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 2, 2])
    model = Tiny()
    method = build_method(f"sampled:{inner}", k)
    reference = build_method(inner, k)
    if inner == "uw":
        with torch.no_grad():
            method.inner.log_vars.copy_(torch.tensor([0.3, -1.0, 2.0]))
            reference.log_vars.copy_(method.inner.log_vars)
    counts = torch.bincount(task, minlength=k)
    method.set_shares(counts.double() / b)

    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        return (model(x[index]) - y[index]).square()

    info = ant_backward(method, loss_fn, task, counts, model)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_fn(torch.arange(b)).mean().backward()  # the plain mean over the B samples
    for g, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)
    assert torch.allclose(info.task_weights.double(), counts.double() / b)
    with torch.no_grad():
        per = loss_fn(torch.arange(b))
    losses = torch.zeros(k).index_add(0, task, per) / counts
    leaf = losses.clone().requires_grad_()
    reference(leaf).backward()
    assert torch.allclose(method.sampling_weights(), leaf.grad, atol=1e-6)
    for mine, theirs in zip(method.inner.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)
    assert method.shares is None  # consumed by the step


@pytest.mark.parametrize("inner", ["pcgrad", "nash"])
def test_gramian_wrapper_gives_the_plain_mean_and_the_inner_weights(inner: str) -> None:
    torch.manual_seed(1)
    k, b = 3, 12
    x, y = torch.randn(b, 3), torch.randn(b)
    task = torch.tensor([0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 2, 2])
    model = Tiny()
    method = build_method(f"sampled:{inner}", k, update_every=2)
    reference = build_method(inner, k, update_every=2)
    counts = torch.bincount(task, minlength=k)

    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        return (model(x[index]) - y[index]).square()

    rows = []
    for j in range(k):  # the task gradients and their Gramian, by hand
        model.zero_grad()
        loss_fn((task == j).nonzero().squeeze(1)).mean().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    gramian = torch.stack(rows) @ torch.stack(rows).T
    expected = reference.refresh(gramian)
    for step in range(2):  # a refresh step, then a step on cached inner weights
        method.set_shares(counts.double() / b)
        info = ant_backward(method, loss_fn, task, counts, model)
        assert info.refreshed == (step == 0)
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        model.zero_grad()
        loss_fn(torch.arange(b)).mean().backward()
        plain = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.allclose(got, plain, atol=1e-6)
        assert torch.allclose(method.sampling_weights(), expected, atol=1e-5)
    assert method.default_max_grad_norm is None


def test_wrapper_state_and_groups_are_the_inner_methods() -> None:
    method = build_method("sampled:uw", 4, lr=0.05)
    assert isinstance(method.inner, UncertaintyWeighting)
    assert method.param_groups()[0]["lr"] == 0.05
    assert "inner.log_vars" in method.state_dict()


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_timestep_sampler("follow:1.5", PART),
        lambda: build_timestep_sampler("follow:0.1,1.0", PART),
        lambda: build_timestep_sampler("follow:0.1,0.9,0.5", PART),
        lambda: build_timestep_sampler("follow:0.1,0.9,3", PART),
        lambda: build_timestep_sampler("follow:0.1,0.9,1,3", PART),
        lambda: build_timestep_sampler("follow:nan", PART),
        lambda: build_method("sampled:sampled:uw", 3),
        lambda: build_method("sampled:uw", 3).set_shares(torch.ones(2)),
        lambda: build_method("sampled:uw", 3).set_shares(torch.tensor([1.0, -1, 0])),
        lambda: build_method("sampled:uw", 3)(torch.ones(3)),  # no shares set
        lambda: FollowSampler(PART).after_step(torch.arange(3), None, torch.ones(4)),
        lambda: FollowSampler(PART).load_state_dict({"ema": torch.zeros(2)}),
    ],
)
def test_bad_input_is_one_clear_line(make) -> None:
    with pytest.raises(AntError) as e:
        make()
    assert "\n" not in str(e.value)


def test_registered_spec_builds_the_sampler() -> None:
    s = build_timestep_sampler("follow:0.2,0.8,1", PART)
    assert isinstance(s, FollowSampler)
    assert (s.floor, s.decay, s.mode) == (0.2, 0.8, 1)
    assert s.importance(torch.arange(4)) is None and not s.needs_losses
    assert isinstance(build_method("sampled:mean", 2), SampledMethod)


def test_loop_contract_moves_the_density_towards_the_inner_weights() -> None:
    """The hook the trainer runs, by hand: shares before the backward, weights after the step."""
    torch.manual_seed(3)
    part = IntervalPartition.from_bounds([0, 50], 100)
    sampler = FollowSampler(part, floor=0.1, decay=0.5)
    method = build_method("sampled:uw", 2, lr=0.05)
    model = Tiny()
    opt = torch.optim.SGD([{"params": model.parameters()}, *method.param_groups()], lr=0.01)
    x = torch.randn(256, 3)
    for step in range(60):
        t, task = sampler.sample(32, torch.Generator().manual_seed(step))
        idx = torch.randint(0, 256, (32,))
        scale = torch.where(task == 0, 1.0, 0.1)  # task 0 has ~100x the loss of task 1

        def loss_fn(i: torch.Tensor, idx=idx, scale=scale) -> torch.Tensor:
            return (model(x[idx[i]]) - scale[i] * 3).square()

        method.set_shares(sampler.shares(task))
        ant_backward(method, loss_fn, task, torch.bincount(task, minlength=2), model)
        opt.step()
        sampler.after_step(t, None, method.sampling_weights())
    log_vars = method.inner.log_vars.detach()
    assert log_vars[0] > log_vars[1]  # UW learned to weight the small-loss task up
    p = sampler.probabilities()
    assert p[1] > 0.5 and p[0] >= 0.1 * 0.5  # the density follows, the floor holds


# ----------------------------------------------------------------------------- in the loop
FOLLOW = [
    "--dataset=digits",
    "--batch-size=15",
    "--num-samples=2",
    "--sample-steps=2",
    "--log-every=4",
    "--method=sampled:uw",
    "--timestep-sampling=follow:0.3,0.5,2",
]


def _state(run) -> dict:
    return torch.load(checkpoint.latest(run) / "state.pt", weights_only=True)


def test_the_loop_feeds_the_sampler_the_inner_weights(tmp_path) -> None:
    """After training, the sampler's average is the inner UW's weights, not the shares."""
    assert main(["train", *FOLLOW, "--steps=6", f"--out={tmp_path / 'r'}"]) == 0
    state = _state(tmp_path / "r")
    assert int(state["sampler"]["seen"].min()) > 0
    log_vars = state["method"]["inner.log_vars"]
    uw = 0.5 * torch.exp(-log_vars.double()) / log_vars.numel()  # UW's d objective / d L_k
    sampler = state["sampler"]
    average = sampler["ema"] / (1 - 0.5 ** sampler["seen"].double())  # bias-corrected (decay 0.5)
    ratio = average / uw  # after 6 steps of a fast average the two are close, not equal
    assert float(ratio.max() / ratio.min()) < 1.2


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path) -> None:
    flags = [*FOLLOW, "--checkpoint-every=5"]
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
    argv = [*FOLLOW, "--steps=6", "--checkpoint-every=6", f"--model-options={_NO_ATTN}"]
    assert main(["train", *argv, f"--out={tmp_path / 'one'}"]) == 0
    train_two_processes(argv, tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    sa, sb = _state(tmp_path / "one"), _state(tmp_path / "two")
    torch.testing.assert_close(sa["sampler"]["ema"], sb["sampler"]["ema"], rtol=1e-4, atol=1e-8)
    assert torch.equal(sa["sampler"]["seen"], sb["sampler"]["seen"])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method=uw", "--timestep-sampling=follow"], "sampled:uw"),
        (["--method=sampled:uw", "--timestep-sampling=stratified"], "plain mean"),
    ],
)
def test_follow_and_sampled_go_together(tmp_path, flags, message) -> None:
    with pytest.raises(AntError, match=message):
        train_config(["--dataset=digits", *flags, f"--out={tmp_path / 'r'}"])

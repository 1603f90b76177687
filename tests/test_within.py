"""`stratified-loss-aware`: B/K samples per interval, Improved DDPM's density inside each."""

import torch
from scipy.stats import chisquare

from antdiff.tasks import IntervalPartition, StratifiedLossAwareSampler, build_timestep_sampler

PART = IntervalPartition.from_bounds([0, 3, 10], 20)  # widths 3, 7, 10


def warmed(seed: int = 0) -> StratifiedLossAwareSampler:
    """A sampler whose history is full: losses growing with t (p_t far from uniform)."""
    s = StratifiedLossAwareSampler(PART, history=2)
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(20).repeat(2)
    s.after_step(t, (t.double() + 1) * (1 + 0.1 * torch.rand(40, generator=g)), torch.ones(3))
    return s


def test_every_interval_gets_its_share_of_the_batch() -> None:
    t, task = warmed().sample(31, torch.Generator().manual_seed(1))
    assert sorted(torch.bincount(task, minlength=3).tolist()) == [10, 10, 11]
    assert torch.equal(task, PART.task_of(t))


def test_draws_inside_an_interval_follow_the_loss_aware_density() -> None:
    s = warmed()
    t, task = s.sample(30_000, torch.Generator().manual_seed(2))
    p = s.probabilities()
    for k, (lo, hi) in enumerate(PART.intervals):
        seen = torch.bincount(t[task == k] - lo, minlength=hi - lo + 1).numpy()
        expected = (p[lo : hi + 1] / p[lo : hi + 1].sum()).numpy() * seen.sum()
        assert chisquare(seen, expected).pvalue > 1e-3, k


def test_importance_weights_keep_each_interval_uniform_mean() -> None:
    """E[w(t) f(t)] inside interval k equals the uniform mean of f over the interval."""
    s = warmed()
    p = s.probabilities()
    f = torch.randn(20, dtype=torch.float64)
    w = s.importance(torch.arange(20)).double()
    for lo, hi in PART.intervals:
        inside = p[lo : hi + 1] / p[lo : hi + 1].sum()
        expected = (inside * w[lo : hi + 1] * f[lo : hi + 1]).sum()
        assert torch.isclose(expected, f[lo : hi + 1].mean())


def test_density_sums_to_one_with_one_kth_per_interval() -> None:
    d = torch.from_numpy(warmed().density())
    assert torch.isclose(d.sum(), torch.tensor(1.0, dtype=d.dtype))
    for lo, hi in PART.intervals:
        assert torch.isclose(d[lo : hi + 1].sum(), torch.tensor(1 / 3, dtype=d.dtype))


def test_registered_and_state_round_trip() -> None:
    s = warmed()
    fresh = build_timestep_sampler("stratified-loss-aware:2", PART)
    fresh.load_state_dict(s.state_dict())
    a = s.sample(50, torch.Generator().manual_seed(3))
    b = fresh.sample(50, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

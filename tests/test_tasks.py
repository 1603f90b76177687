"""Interval partitions and timestep samplers."""

import json

import pytest
import torch

from antdiff.errors import AntError
from antdiff.tasks import (
    IntervalPartition,
    RangeSampler,
    StratifiedSampler,
    UniformSampler,
    build_timestep_sampler,
)


def test_partition_round_trip_and_lookup() -> None:
    p = IntervalPartition(((0, 2), (3, 3), (4, 9)), 10)
    assert IntervalPartition.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.task_of(torch.arange(10)).tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert p.widths.tolist() == [3, 1, 6]


def test_uniform_partition() -> None:
    assert IntervalPartition.uniform(1000, 5).intervals == (
        (0, 199),
        (200, 399),
        (400, 599),
        (600, 799),
        (800, 999),
    )
    assert IntervalPartition.uniform(7, 7).widths.tolist() == [1] * 7


@pytest.mark.parametrize(
    "intervals,T",
    [
        ((), 5),
        (((0, 2), (4, 4)), 5),
        (((1, 4),), 5),
        (((0, 3),), 5),
        (((0, 2), (3, 2)), 4),
        (((0, 4),), 0),
    ],
)
def test_partition_validation(intervals, T) -> None:
    with pytest.raises(AntError):
        IntervalPartition(intervals, T)


def test_partition_rejects_out_of_range_t() -> None:
    with pytest.raises(AntError):
        IntervalPartition.uniform(10, 2).task_of(torch.tensor([10]))
    with pytest.raises(AntError):
        IntervalPartition.from_dict({"intervals": [[0, 1]]})


@pytest.mark.parametrize("B", [1, 4, 5, 7, 64, 101])
def test_stratified_counts_and_ranges(B: int) -> None:
    part = IntervalPartition(((0, 0), (1, 10), (11, 99), (100, 100), (101, 999)), 1000)
    g = torch.Generator().manual_seed(B)
    t, task = StratifiedSampler(part).sample(B, g)
    assert t.shape == task.shape == (B,)
    counts = torch.bincount(task, minlength=part.k)
    assert counts.max() - counts.min() <= 1 and int(counts.sum()) == B
    assert torch.equal(part.task_of(t), task)  # every t lies inside its own interval


def test_stratified_is_uniform_inside_each_interval_and_balanced() -> None:
    part = IntervalPartition(((0, 3), (4, 11)), 12)
    g = torch.Generator().manual_seed(0)
    sampler = StratifiedSampler(part)
    t = torch.cat([sampler.sample(7, g)[0] for _ in range(1500)])
    freq = torch.bincount(t, minlength=12).double() / t.numel()
    # each interval gets half the mass (the odd sample alternates at random), spread uniformly
    assert freq[:4].sum().item() == pytest.approx(0.5, abs=0.015)
    assert torch.allclose(freq[:4], torch.full((4,), 0.125, dtype=torch.float64), atol=0.015)
    assert torch.allclose(freq[4:], torch.full((8,), 0.0625, dtype=torch.float64), atol=0.015)


def test_uniform_sampler() -> None:
    part = IntervalPartition.uniform(50, 3)
    t, task = UniformSampler(part).sample(5000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 0 and int(t.max()) == 49
    assert torch.equal(part.task_of(t), task)
    freq = torch.bincount(t, minlength=50).double() / 5000
    assert freq.std().item() < 0.01


def test_samplers_are_seeded() -> None:
    part = IntervalPartition.uniform(100, 4)
    for name in ("uniform", "stratified"):
        s = build_timestep_sampler(name, part)
        a = s.sample(33, torch.Generator().manual_seed(3))
        b = s.sample(33, torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(AntError):
        build_timestep_sampler("bogus", part)
    with pytest.raises(AntError):
        StratifiedSampler(part).sample(0)


def test_range_sampler_stays_inside_its_bounds() -> None:
    part = IntervalPartition.uniform(100, 5)
    t, task = RangeSampler((20, 39), part).sample(2000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 20 and int(t.max()) == 39
    assert torch.equal(task, torch.ones_like(task))

"""The DP equals exhaustive search on every cost; costs equal their direct definitions."""

from itertools import combinations

import numpy as np
import pytest

from antdiff.diffusion import NoiseSchedule
from antdiff.errors import AntError
from antdiff.tasks import (
    IntervalPartition,
    affinity_cost,
    callable_cost,
    cluster,
    cluster_timesteps,
    interpolate_affinity,
    median_cost,
    timestep_cost,
)


# Direct, prefix-sum-free definitions of each interval cost (inclusive 0-based bounds).
def direct_timestep(l: int, r: int, _=None) -> float:
    t = np.arange(l, r + 1, dtype=float)
    return float(((t - t.mean()) ** 2).sum())


def direct_median(l: int, r: int, v: np.ndarray) -> float:
    seg = v[l : r + 1]
    return float(np.abs(seg - np.median(seg)).sum())  # any median gives the same L1 sum


def direct_affinity(l: int, r: int, A: np.ndarray) -> float:
    return -float(A[(l + r + 1) // 2, l : r + 1].sum())


def brute_force(T: int, k: int, cost) -> float:
    best = np.inf
    for cuts in combinations(range(1, T), k - 1):
        lefts = [0, *cuts]
        rights = [c - 1 for c in cuts] + [T - 1]
        best = min(best, sum(cost(l, r) for l, r in zip(lefts, rights, strict=True)))
    return best


def total(part: IntervalPartition, cost) -> float:
    return sum(cost(l, r) for l, r in part.intervals)


def random_monotone(rng: np.random.Generator, T: int) -> np.ndarray:
    if rng.random() < 0.5:  # integer plateaus: ties and zero-cost intervals
        v = np.sort(rng.integers(0, 4, T)).astype(float)
    else:
        v = np.sort(rng.exponential(size=T) ** 3)
    return v[::-1].copy() if rng.random() < 0.5 else v


def random_affinity(rng: np.random.Generator, T: int) -> np.ndarray:
    A = rng.uniform(-1, 1, (T, T))
    if rng.random() < 0.3:
        A = np.round(A)  # ties
    A = (A + A.T) / 2
    np.fill_diagonal(A, 1.0)
    return A


def instances(T: int, rng: np.random.Generator):
    yield "timestep", timestep_cost(T), lambda l, r: direct_timestep(l, r)
    for _ in range(2):
        v = random_monotone(rng, T)
        yield "median", median_cost(v), lambda l, r, v=v: direct_median(l, r, v)
        A = random_affinity(rng, T)
        yield "affinity", affinity_cost(A), lambda l, r, A=A: direct_affinity(l, r, A)
    U = rng.normal(size=(T, T))
    yield "matrix", U, lambda l, r, U=U: float(U[l, r])


@pytest.mark.parametrize("T", range(1, 13))
def test_dp_equals_exhaustive_search(T: int) -> None:
    rng = np.random.default_rng(T)
    for name, C, direct in instances(T, rng):
        for k in range(1, T + 1):
            res = cluster(C, k)
            best = brute_force(T, k, direct)
            assert res.partition.k == k
            assert res.total == pytest.approx(best, abs=1e-9), (name, T, k)
            assert total(res.partition, direct) == pytest.approx(best, abs=1e-9), (name, T, k)


def test_cost_matrices_equal_direct_definitions() -> None:
    rng = np.random.default_rng(0)
    T = 9
    v, A = random_monotone(rng, T), random_affinity(rng, T)
    for C, direct in [
        (timestep_cost(T), direct_timestep),
        (median_cost(v), lambda l, r: direct_median(l, r, v)),
        (affinity_cost(A), lambda l, r: direct_affinity(l, r, A)),
    ]:
        for l in range(T):
            for r in range(T):
                expected = direct(l, r) if l <= r else np.inf
                assert C[l, r] == pytest.approx(expected, abs=1e-9)


def test_zero_cost_optimum_is_found() -> None:
    # The official code masks zero costs as inf and misses this optimum (reference 9.1).
    v = np.array([0, 0, 0, 10, 10, 10, 20, 20, 20], dtype=float)
    res = cluster(median_cost(v), 3)
    assert res.total == 0.0
    assert res.partition.intervals == ((0, 2), (3, 5), (6, 8))


def test_edge_cases_k1_and_kT() -> None:
    T = 7
    C = timestep_cost(T)
    assert cluster(C, 1).partition.intervals == ((0, T - 1),)
    assert cluster(C, T).partition.intervals == tuple((t, t) for t in range(T))
    assert cluster(C, T).total == 0.0


@pytest.mark.parametrize("T,k", [(1000, 5), (1000, 3), (997, 7), (4000, 10)])
def test_timestep_cost_gives_equal_widths(T: int, k: int) -> None:
    res = cluster_timesteps("timestep", k, NoiseSchedule.from_name("linear", T))
    widths = [r - l + 1 for l, r in res.partition.intervals]
    assert max(widths) - min(widths) <= 1
    assert res.partition == IntervalPartition.uniform(T, k) or sorted(widths) == sorted(
        (IntervalPartition.uniform(T, k).widths).tolist()
    )


def test_paper_log_snr_intervals() -> None:
    # reference/paper.md 4.3 (1-based there): linear [1,153],[154,393],[394,623],[624,822],...
    res = cluster_timesteps("log-snr", 5, NoiseSchedule.from_name("linear", 1000))
    assert res.partition.intervals == ((0, 152), (153, 393), (394, 623), (624, 822), (823, 999))


def test_callable_cost_matches_matrix() -> None:
    rng = np.random.default_rng(1)
    v = random_monotone(rng, 10)
    a = cluster(callable_cost(lambda l, r: direct_median(l, r, v), 10), 4)
    b = cluster(median_cost(v), 4)
    assert a.total == pytest.approx(b.total)


def test_interpolated_affinity() -> None:
    A = random_affinity(np.random.default_rng(2), 6)
    assert np.allclose(interpolate_affinity(A, 6), A)  # same size: identity
    big = interpolate_affinity(A, 60)
    assert big.shape == (60, 60)
    assert np.allclose(big, big.T)
    assert big[0, 0] == pytest.approx(1.0) and big[59, 59] == pytest.approx(1.0)
    assert affinity_cost(A, 60).shape == (60, 60)


@pytest.mark.parametrize(
    "make",
    [
        lambda: median_cost(np.array([1.0, 3.0, 2.0])),  # not monotone
        lambda: median_cost(np.array([3.0, np.nan, 1.0])),
        lambda: median_cost(np.array([3.0, 2.0, -np.inf])),
        lambda: affinity_cost(np.ones((3, 4))),
        lambda: affinity_cost(np.array([[1.0, np.inf], [0.0, 1.0]])),
        lambda: cluster(timestep_cost(5), 0),
        lambda: cluster(timestep_cost(5), 6),
        lambda: cluster_timesteps("nope", 2, NoiseSchedule.from_name("linear", 10)),
        lambda: cluster_timesteps("affinity", 2, NoiseSchedule.from_name("linear", 10)),
    ],
)
def test_bad_input_raises_ant_error(make) -> None:
    with pytest.raises(AntError):
        make()

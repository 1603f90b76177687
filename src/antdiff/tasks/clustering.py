"""Exact interval clustering of timesteps by dynamic programming (Go et al. 2023, Sec. 4).

Problem: split 0..T-1 into k contiguous intervals I_1..I_k minimising sum_i L(I_i).
Recurrence (0-based, inclusive intervals):
    D_1(r) = L([0, r])
    D_j(r) = min_{j-2 <= m < r} D_{j-1}(m) + L([m+1, r])            j = 2..k
and the answer is D_k(T-1), recovered by back-pointers. Every interval cost below is O(1) after
prefix sums, so the full cost matrix C[l, r] takes O(T^2) and the DP O(k T^2), both vectorised.
Unlike the official code (github.com/gohyojun15/ANT_diffusion, interval_clustering.py): no
zero-cost masking, exact m+1 bounds, integer bounds and no hard-coded T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from antdiff.errors import AntError
from antdiff.tasks.partition import IntervalPartition

COSTS = ("timestep", "snr", "log-snr", "affinity")
MAX_TIMESTEPS = 10_000  # a T x T float64 cost matrix takes 0.75 GiB there


@dataclass(frozen=True)
class Clustering:
    """An optimal partition, its total cost, and the name of the cost it minimises."""

    partition: IntervalPartition
    total: float
    cost: str


def timestep_cost(timesteps: int) -> np.ndarray:
    """C[l, r] = sum_{t in [l,r]} (t - mean)^2 = n (n^2 - 1) / 12 with n = r - l + 1 (exact).

    A k-means cost on t; its optimum is the equal-width partition the paper's code trains with.
    """
    n = _widths(timesteps)
    return np.where(n > 0, n * (n * n - 1) / 12.0, np.inf)


def median_cost(values: np.ndarray) -> np.ndarray:
    """C[l, r] = sum_{t in [l,r]} |v_t - v_median| for a monotone sequence v (1-D k-medians).

    With v = raw SNR this is the official code's SNR cost; with v = log-SNR it is our `log-snr`.
    For monotone v the middle index is a median, and each half's terms share one sign, so each
    half's sum of |.| is |prefix sum - count * v_c|: O(1) per interval.
    """
    v = _check_values(values)
    T = v.shape[0]
    P = np.concatenate([[0.0], np.cumsum(v)])
    # The centre c = floor((l + r) / 2) depends on l + r only, so every c-term is a Hankel
    # matrix H[l, r] = h[l + r]: a zero-copy strided view instead of T^2 gathers.
    c = np.arange(2 * T - 1) // 2
    vc = _hankel(v[c], T)
    A = _hankel(P[c] - c * v[c], T)  # left half: P[c] - P[l] - (c - l) v_c
    l = np.arange(T, dtype=np.float64)[:, None]
    r1 = np.arange(1, T + 1, dtype=np.float64)[None, :]
    left = np.abs(A - P[:-1, None] + l * vc)
    right = np.abs(P[None, 1:] - r1 * vc - A)  # right half: P[r+1] - P[c] - (r + 1 - c) v_c
    left += right
    left[_below_diagonal(T)] = np.inf
    return left


def affinity_cost(affinity: np.ndarray, timesteps: int | None = None) -> np.ndarray:
    """C[l, r] = -sum_{t in [l,r]} A[c, t] with centre c = floor((l + r + 1) / 2).

    The official code's gradient-based cost (interval_clustering.py:68-76): each interval's
    members should have high task affinity to its centre task. A bins x bins matrix is
    interpolated to T x T first (see `interpolate_affinity`).
    """
    A = check_affinity(affinity)
    if timesteps is not None and A.shape[0] > timesteps:
        raise AntError(
            f"the affinity matrix has {A.shape[0]} bins but there are only {timesteps} timesteps"
        )
    if timesteps is not None and A.shape[0] != timesteps:
        A = interpolate_affinity(A, timesteps)
    T = A.shape[0]
    R = np.concatenate([np.zeros((T, 1)), np.cumsum(A, axis=1)], axis=1)
    l, r, c = _bounds(T, 1)
    flat = R.ravel()
    total = flat[c * (T + 1) + r + 1] - flat[c * (T + 1) + l]
    return np.where(l <= r, -total, np.inf)


def callable_cost(fn: Callable[[int, int], float], timesteps: int) -> np.ndarray:
    """Cost matrix from a user function L(l, r) on inclusive 0-based bounds (O(T^2) calls)."""
    C = np.full((timesteps, timesteps), np.inf)
    for l in range(timesteps):
        for r in range(l, timesteps):
            C[l, r] = float(fn(l, r))
    return check_cost_matrix(C)


def check_cost_matrix(C: np.ndarray) -> np.ndarray:
    """Validated float64 copy of C[l, r]; entries below the diagonal are ignored (set to inf)."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise AntError(f"a cost matrix must be square T x T, got shape {C.shape}")
    below = _below_diagonal(C.shape[0])
    if ((np.isnan(C) | np.isneginf(C)) & ~below).any():
        raise AntError("the cost matrix holds NaN or -inf on or above its diagonal")
    return np.where(below, np.inf, C)  # only l <= r is an interval


def check_affinity(affinity: np.ndarray) -> np.ndarray:
    """A float64 copy of a square, finite, real task-affinity matrix."""
    raw = np.asarray(affinity)
    if raw.dtype.kind not in "biuf":
        raise AntError(f"an affinity matrix must hold real numbers, got dtype {raw.dtype}")
    A = raw.astype(np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise AntError(f"an affinity matrix must be square, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise AntError("the affinity matrix holds NaN or inf")
    return A


def interpolate_affinity(affinity: np.ndarray, timesteps: int) -> np.ndarray:
    """Bilinear interpolation of a B x B matrix over B equal-width timestep bins to T x T."""
    A = check_affinity(affinity)
    B = A.shape[0]
    pos = np.clip((np.arange(timesteps) + 0.5) * B / timesteps - 0.5, 0, B - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, B - 1)
    w = pos - lo
    rows = A[lo] * (1 - w)[:, None] + A[hi] * w[:, None]
    return rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]


def cluster_dp(C: np.ndarray, k: int) -> tuple[list[int], float]:
    """Exact DP over a cost matrix C[l, r]; returns the left bounds and the optimal total cost."""
    C = check_cost_matrix(C)
    T = C.shape[0]
    if not 1 <= k <= T:
        raise AntError(f"k must be in 1..{T} (the number of timesteps), got {k}")
    D = C[0].copy()
    CT = np.ascontiguousarray(C[1:].T)  # CT[r, m] = L([m+1, r]), rows contiguous for argmin
    back = np.zeros((k, T), dtype=np.int64)
    rows = np.arange(T)
    for j in range(1, k):
        M = CT + D[None, :-1]  # M[r, m] = D_{j-1}(m) + L([m+1, r])
        arg = np.argmin(M, axis=1)
        D = M[rows, arg]
        back[j] = arg
    if not np.isfinite(D[T - 1]):
        raise AntError(f"no partition into {k} intervals has a finite cost")
    lefts, r = [], T - 1
    for j in range(k - 1, 0, -1):
        m = int(back[j, r])
        lefts.append(m + 1)
        r = m
    return [0, *reversed(lefts)], float(D[T - 1])


def cluster(C: np.ndarray, k: int, cost: str = "custom") -> Clustering:
    """Optimal k-interval partition for the cost matrix C (see module docstring)."""
    lefts, total = cluster_dp(C, k)
    return Clustering(IntervalPartition.from_bounds(lefts, C.shape[0]), total, cost)


def _below_diagonal(T: int) -> np.ndarray:
    """Boolean mask of the entries l > r, which are not intervals."""
    return np.tri(T, k=-1, dtype=bool)


def _hankel(h: np.ndarray, T: int) -> np.ndarray:
    """Read-only view H[l, r] = h[l + r] of a length 2T-1 array."""
    h = np.ascontiguousarray(h)
    return np.lib.stride_tricks.as_strided(h, (T, T), (h.strides[0],) * 2, writeable=False)


def _bounds(T: int, shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcast grids l [T, 1], r [1, T] and the centre c = floor((l + r + shift) / 2)."""
    l = np.arange(T)[:, None]
    r = np.arange(T)[None, :]
    return l, r, (l + r + shift) // 2


def check_size(T: int) -> None:
    """Every cost matrix is T x T float64: refuse a T whose matrices would not fit in memory."""
    if T > MAX_TIMESTEPS:
        gib = 8 * T * T / 2**30
        raise AntError(
            f"the exact DP keeps T x T interval costs ({gib:.0f} GiB at T = {T}); "
            f"use T <= {MAX_TIMESTEPS}"
        )


def _widths(T: int) -> np.ndarray:
    idx = np.arange(T, dtype=np.float64)
    n = idx[None, :] - idx[:, None] + 1
    return np.where(n > 0, n, 0.0)


def _check_values(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 1:
        raise AntError(f"SNR values must be a non-empty 1-D array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise AntError(
            "SNR values must be finite (a zero-terminal-SNR schedule has log-SNR = -inf at the "
            "last step; use the raw `snr` cost or drop that step)"
        )
    d = np.diff(v)
    if not ((d <= 0).all() or (d >= 0).all()):
        raise AntError("SNR values must be monotone in t for the median cost")
    return v

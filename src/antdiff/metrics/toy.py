"""Exact sample metrics for 2-D toy data, where no feature network is needed.

- Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015): the p-Wasserstein
  distance averaged over random 1-D projections, here a fixed seeded set of directions so that
  two evaluations of the same points agree exactly. Each 1-D distance is exact, also for sets
  of different sizes (quantile functions compared on the union of their breakpoints).
- MMD^2 with a sum of RBF kernels at fixed bandwidths, unbiased U-statistic (Gretton et al. 2012,
  eq. 3); it can be slightly negative when the two sets come from the same law.
- Mean log-likelihood under a known isotropic Gaussian mixture (the toy's true density). A few
  far outliers dominate it (and SWD, a squared distance); the next two are robust to them.
- Mixture quality, the GAN toy convention (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al.
  2018): the share of "high-quality" samples within 3 std of their nearest mean, and the total
  variation between the high-quality samples' mode histogram and the mixture weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError

DEFAULT_BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _points(x: Tensor | np.ndarray, name: str, dim: int | None = None) -> Tensor:
    t = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if t.ndim != 2 or t.shape[0] == 0 or (dim is not None and t.shape[1] != dim):
        want = f"[N, {dim}]" if dim else "[N, D]"
        raise AntError(f"{name} must be a non-empty {want} array; got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise AntError(f"{name} contain NaN or infinite values")
    return t


def _wasserstein_1d_pow(a: Tensor, b: Tensor, p: float) -> Tensor:
    """W_p^p between the empirical laws of the columns of a [N, P] and b [M, P] (exact)."""
    a, b = a.sort(dim=0).values, b.sort(dim=0).values
    n, m = len(a), len(b)
    if n == m:
        return (a - b).abs().pow(p).mean(dim=0)
    f64 = torch.float64
    cuts = torch.cat([torch.arange(n + 1, dtype=f64) / n, torch.arange(m + 1, dtype=f64) / m])
    cuts = torch.unique(cuts)  # sorted breakpoints of both quantile functions in [0, 1]
    width, mid = cuts.diff(), (cuts[1:] + cuts[:-1]) / 2
    ia = (mid * n).floor().long().clamp_max(n - 1)
    ib = (mid * m).floor().long().clamp_max(m - 1)
    return ((a[ia] - b[ib]).abs().pow(p) * width[:, None]).sum(dim=0)


def sliced_wasserstein(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    num_projections: int = 256,
    p: float = 2.0,
    seed: int = 0,
) -> float:
    """(mean over seeded unit directions of W_p^p of the projections)^(1/p)."""
    x, y = _points(x, "points"), _points(y, "reference points")
    if x.shape[1] != y.shape[1]:
        raise AntError(f"point dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return float(_wasserstein_1d_pow(x @ dirs, y @ dirs, p).mean() ** (1.0 / p))


def mmd2_rbf(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> float:
    """Unbiased MMD^2 with k(a, b) = mean_h exp(-|a - b|^2 / (2 h^2)) over fixed bandwidths h."""
    x, y = _points(x, "points"), _points(y, "reference points")
    if len(x) < 2 or len(y) < 2:
        raise AntError("unbiased MMD needs at least 2 points in each set")
    if x.shape[1] != y.shape[1]:
        raise AntError(f"point dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    h2 = 2.0 * torch.tensor(bandwidths, dtype=torch.float64) ** 2

    def kernel_sum(a: Tensor, b: Tensor, block: int = 1024) -> Tensor:
        """sum_ij k(a_i, b_j), a block of rows at a time: memory O(block * len(b))."""
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, len(a), block):
            d2 = torch.cdist(a[i : i + block], b, compute_mode="donot_use_mm_for_euclid_dist")
            d2 = d2.pow(2)
            total += sum(torch.exp(-d2 / h).sum() for h in h2.tolist()) / len(h2)
        return total

    n, m = len(x), len(y)
    kxx = (kernel_sum(x, x) - n) / (n * (n - 1))  # the diagonal is exactly 1
    kyy = (kernel_sum(y, y) - m) / (m * (m - 1))
    return float(kxx + kyy - 2.0 * kernel_sum(x, y) / (n * m))


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic 2-D Gaussian mixture: means [M, 2], one std, weights [M] (uniform if None)."""

    means: Tensor | np.ndarray | Sequence[Sequence[float]]
    std: float
    weights: Tensor | np.ndarray | Sequence[float] | None = None


def _mixture_parts(points: Tensor | np.ndarray, mixture: GaussianMixture):
    """(points [N, D], weights [M] summing to 1, squared distances to the means [N, M])."""
    means = _points(torch.as_tensor(np.asarray(mixture.means, dtype=np.float64)), "mixture means")
    x = _points(points, "points", dim=means.shape[1])
    if not mixture.std > 0:
        raise AntError(f"mixture std must be positive; got {mixture.std}")
    m = means.shape[0]
    if mixture.weights is None:
        w = torch.full((m,), 1.0 / m, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(mixture.weights, dtype=np.float64))
        if w.shape != (m,) or (w < 0).any() or w.sum() <= 0:
            raise AntError(f"mixture weights must be {m} non-negative numbers")
        w = w / w.sum()
    d2 = torch.cdist(x, means, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return x, w, d2


def gmm_log_likelihood(points: Tensor | np.ndarray, mixture: GaussianMixture) -> float:
    """Mean log-density of points [N, D] under the mixture (nats per point)."""
    x, w, d2 = _mixture_parts(points, mixture)
    var = float(mixture.std) ** 2
    log_norm = -0.5 * x.shape[1] * math.log(2 * math.pi * var)
    return float(torch.logsumexp(w.log() - d2 / (2 * var), dim=1).mean() + log_norm)


def mixture_quality(points: Tensor | np.ndarray, mixture: GaussianMixture) -> dict[str, float]:
    """in_3std: share of points within 3 std of the nearest mean (true 2-D samples: 0.989);
    mode_tv: total variation between the modes of those points and the weights (0 = exact)."""
    _, w, d2 = _mixture_parts(points, mixture)
    nearest, mode = d2.min(dim=1)
    good = nearest <= (3.0 * float(mixture.std)) ** 2
    share = torch.bincount(mode[good], minlength=len(w)).double() / max(int(good.sum()), 1)
    return {"in_3std": float(good.double().mean()), "mode_tv": 0.5 * float((share - w).abs().sum())}

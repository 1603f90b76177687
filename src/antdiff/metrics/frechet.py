"""Frechet distance between Gaussian fits of two feature sets (the formula behind FID).

Heusel et al. 2017, eq. (6):  d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).
Computed in float64 with scipy's matrix square root. S1 S2 is not symmetric, so sqrtm can return
tiny imaginary parts from round-off: those are dropped (large ones are an error); when the
product is singular and sqrtm fails to give a finite result or one with a large imaginary part
(which happens with fewer samples than dimensions), eps is added to both diagonals and the root
is retried (as in the reference FID code), never otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from torch import Tensor

from antdiff.errors import AntError

ArrayLike = Tensor | np.ndarray


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D] (float64).

    Raises when N <= D: the covariance is then rank-deficient and the distance is ill-posed.
    """
    f = _as_float64(features)
    if f.ndim != 2 or f.shape[0] == 0:
        raise AntError(f"features must be a non-empty [N, D] array; got shape {f.shape}")
    if not np.isfinite(f).all():
        raise AntError("features contain NaN or infinite values")
    n, d = f.shape
    if n <= d:
        raise AntError(
            f"Frechet distance is ill-posed with {n} samples of {d}-d features; "
            f"use more than {d} samples"
        )
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    eps: float = 1e-6,
    tolerance: float = 1e-8,
) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    A result below 0 by at most ``tolerance`` x (Tr S1 + Tr S2 + 1) is round-off and gives 0;
    singular covariances (fewer samples than dimensions) need a looser one (about 1e-5).
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise AntError(f"mismatched statistics: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular input; we check the result
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all() or _imaginary(covmean) > 1e-3:
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if _imaginary(covmean) > 1e-3:
            imag = np.abs(covmean.imag).max()
            raise AntError(f"matrix square root has a large imaginary part ({imag:.3g})")
        covmean = covmean.real
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    if value < 0:  # round-off makes the distance of a set to itself a tiny negative number
        if value < -tolerance * (np.trace(s1) + np.trace(s2) + 1.0):
            raise AntError(f"Frechet distance came out negative ({value:.3g}): bad statistics")
        value = 0.0
    return float(value)


def _imaginary(m: np.ndarray) -> float:
    """Largest imaginary part of a matrix relative to its largest real entry (at least 1)."""
    if not np.iscomplexobj(m):
        return 0.0
    return float(np.abs(m.imag).max() / max(np.abs(m.real).max(), 1.0))


def frechet_distance(features1: ArrayLike, features2: ArrayLike) -> float:
    """Frechet distance between Gaussian fits of two feature sets [N1, D] and [N2, D].

    Biased upwards for finite N (as FID is): compare numbers computed with the same sample sizes.
    """
    mu1, s1 = gaussian_stats(features1)
    mu2, s2 = gaussian_stats(features2)
    return frechet_distance_from_stats(mu1, s1, mu2, s2)

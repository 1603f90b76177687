"""Improved precision and recall of a generative model (Kynkaanniemi et al., NeurIPS 2019).

FID mixes fidelity and coverage into one number. Here each set is a manifold: the union of balls
around its feature vectors whose radius is the distance to the k-th nearest neighbour in the same
set (k = 3, the paper's default). Precision is the fraction of generated samples inside the real
manifold (fidelity); recall is the fraction of real samples inside the generated one (coverage).
Density and coverage (Naeem et al., ICML 2020) reuse the same radii and are given for free.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError

_CHUNK = 1024


def _as_float64(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise AntError(f"{name} features must be a non-empty [N, D] array; got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise AntError(f"{name} features contain NaN or infinite values")
    return t


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Exact Euclidean distances [len(a), len(b)]; no matmul trick, so self-distances are 0."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: Tensor, k: int = 3) -> Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise AntError(f"k-NN radii need more than k={k} samples; got {len(features)}")
    # the smallest distance in each row (index 1 of kthvalue) is the point itself
    return torch.cat(
        [
            _distances(features[i : i + _CHUNK], features).kthvalue(k + 1, dim=1).values
            for i in range(0, len(features), _CHUNK)
        ]
    )


def precision_recall(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 3
) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` features [N, D].

    Memory stays O(chunk x N): the distance matrix is visited in blocks of generated samples.
    """
    r, f = _as_float64(real, "real"), _as_float64(fake, "generated")
    if r.shape[1] != f.shape[1]:
        raise AntError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    r_rad, f_rad = knn_radii(r, k), knn_radii(f, k)
    precise = density = 0.0
    recalled = torch.zeros(len(r), dtype=torch.bool)
    nearest_fake = torch.full((len(r),), float("inf"), dtype=torch.float64)
    for i in range(0, len(f), _CHUNK):
        d = _distances(f[i : i + _CHUNK], r)  # [chunk, N_real]
        inside_real = d <= r_rad[None, :]  # fake i lies in the ball of real j
        precise += float(inside_real.any(dim=1).sum())
        density += float(inside_real.sum())
        recalled |= (d <= f_rad[i : i + _CHUNK, None]).any(dim=0)  # real j in a fake ball
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    return {
        "precision": precise / len(f),
        "recall": float(recalled.to(torch.float64).mean()),
        "density": density / (k * len(f)),
        "coverage": float((nearest_fake <= r_rad).to(torch.float64).mean()),
    }

"""Procedural 2-D toy data sets of roughly unit scale (std about 1 per coordinate)."""

from __future__ import annotations

import math

import numpy as np
import torch

from antdiff.data.base import Dataset
from antdiff.errors import AntError

TOYS = ("gaussians8", "checkerboard", "swissroll", "moons", "rings")
DEFAULT_POINTS = 20000


def load_toy(name: str, num_points: int = DEFAULT_POINTS, seed: int = 0) -> Dataset:
    """A procedural 2-D data set with roughly unit scale (std about 1 per coordinate)."""
    if name not in TOYS:
        raise AntError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
    if num_points < 1:
        raise AntError(f"num_points must be >= 1, got {num_points}")
    rng = np.random.default_rng(seed)
    x, labels, meta = _TOY_MAKERS[name](num_points, rng)
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    num_classes = 0 if labels is None else int(meta.pop("num_classes"))
    return Dataset(
        torch.as_tensor(x, dtype=torch.float32), y, num_classes, "points", f"toy:{name}", meta
    )


def _gaussians8(n: int, rng: np.random.Generator) -> tuple:
    """8 isotropic Gaussians on a circle of radius sqrt(2): per-coordinate std close to 1."""
    angles = np.arange(8) * (2 * np.pi / 8)
    means = math.sqrt(2.0) * np.stack([np.cos(angles), np.sin(angles)], 1)
    std = 0.1
    comp = rng.integers(0, 8, n)
    x = means[comp] + std * rng.standard_normal((n, 2))
    meta = {"means": torch.tensor(means, dtype=torch.float32), "std": std, "num_classes": 8}
    return x, comp, meta


def _checkerboard(n: int, rng: np.random.Generator) -> tuple:
    """4x4 checkerboard on [-2, 2]^2, 8 filled squares; label = square index."""
    cx, cy = rng.integers(0, 4, n), rng.integers(0, 2, n)
    cy = 2 * cy + (cx % 2)  # filled squares alternate
    x = np.stack([cx + rng.random(n), cy + rng.random(n)], 1) - 2.0
    return x / 1.15, cx * 2 + cy // 2, {"num_classes": 8}


def _swissroll(n: int, rng: np.random.Generator) -> tuple:
    """The 2-D Swiss roll (x, z of scikit-learn's make_swiss_roll), standardised."""
    from sklearn.datasets import make_swiss_roll

    pts, _ = make_swiss_roll(n, noise=0.5, random_state=int(rng.integers(2**31)))
    x = pts[:, [0, 2]]
    return (x - x.mean(0)) / x.std(), None, {}


def _moons(n: int, rng: np.random.Generator) -> tuple:
    """Two interleaving half circles (scikit-learn's make_moons), standardised; label = moon."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - x.mean(0)) / x.std(), y, {"num_classes": 2}


def _rings(n: int, rng: np.random.Generator) -> tuple:
    """Four concentric rings of radii 0.5..2 (noise std 0.04); label = ring."""
    ring = rng.integers(0, 4, n)
    radius = 0.5 * (ring + 1) + 0.04 * rng.standard_normal(n)
    angle = rng.random(n) * 2 * np.pi
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return x, ring, {"num_classes": 4}


_TOY_MAKERS = {
    "gaussians8": _gaussians8,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "rings": _rings,
}

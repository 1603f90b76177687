"""The standard Inception FID between two image sets, with cached reference statistics.

FID = the Frechet distance (frechet.py, Heusel et al. 2017 eq. 6) between Gaussian fits of the
2048-d Inception pool3 features (inception.py) of the two sets. A side is an image folder, an
.npz of images (``x``/``images``) or of precomputed statistics (``mu``, ``sigma``, as
pytorch-fid writes them), or a data set spec (``animals``, ``mnist:DIR``, ``digits``, ...). The
statistics of a data set cost minutes on a CPU, so they are computed once and cached under a key
of everything they depend on: the pixel bytes the network sees (so the data, its split and the
number of images), the weights file and the resize.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from antdiff.data import cache_dir, load_dataset, load_folder, load_npz
from antdiff.errors import AntError
from antdiff.metrics.frechet import frechet_distance_from_stats
from antdiff.metrics.inception import RESIZE, Inception

MIN_IMAGES = 2  # a covariance needs two samples; FID is strongly biased far below 2,048 (its dim)
Stats = tuple[np.ndarray, np.ndarray]


def feature_stats(features: np.ndarray) -> Stats:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2.

    Unlike gaussian_stats this allows N <= D, as the reference FID code does: the covariance is
    then singular and the FID biased upwards, so compare FIDs only at equal N.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < MIN_IMAGES:
        raise AntError(f"FID needs at least {MIN_IMAGES} images, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_stats(a: Stats, b: Stats) -> float:
    """FID of two (mu, sigma) pairs; with fewer images than 2,048 the covariances are singular
    and the matrix root carries a relative round-off near 1e-6 (measured), hence the tolerance."""
    return frechet_distance_from_stats(a[0], a[1], b[0], b[1], tolerance=1e-5)


def pixel_sha256(images: Tensor) -> str:
    """SHA-256 of the uint8 pixels the FID sees (images in [-1, 1], quantised as for the net)."""
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    h = hashlib.sha256(str(tuple(pixels.shape)).encode())
    h.update(pixels.contiguous().numpy().tobytes())
    return h.hexdigest()


def image_stats(images: Tensor, net: Inception | None = None, progress: bool = True) -> Stats:
    """Inception statistics of images in [-1, 1] (never cached: e.g. a model's samples)."""
    if len(images) < MIN_IMAGES:
        raise AntError(f"FID needs at least {MIN_IMAGES} images, got {len(images)}")
    net = net or Inception()
    return feature_stats(net.features(images, progress=progress))


def reference_stats(
    images: Tensor, name: str, net: Inception | None = None, progress: bool = True
) -> Stats:
    """Inception statistics of a real image set, computed once and then read from the cache."""
    net = net or Inception()
    key = {
        "data": name,
        "pixels_sha256": pixel_sha256(images),
        "num_images": len(images),
        "weights_sha256": net.sha256,
        "resize": RESIZE,
        "version": 1,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "fid_stats" / f"{digest}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    mu, sigma = image_stats(images, net, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, mu=mu, sigma=sigma, key=json.dumps(key, sort_keys=True))
    os.replace(tmp, path)
    return mu, sigma


def load_side(spec: str) -> Stats | tuple[Tensor, str | None]:
    """One side of ``antdiff fid``: stored (mu, sigma), or (images, data set name or None).

    Everything is read and checked here, before the network is loaded: a bad side fails fast.
    A spec (``animals``, ``mnist:DIR``, ``folder:PATH``, ...) is a reference whose statistics
    are cached; a bare folder or .npz (e.g. samples) is not cached.
    """
    p = Path(spec).expanduser()
    named = spec in ("digits", "animals") or spec.partition(":")[0] in ("folder", "npz", "mnist")
    if named:  # a data set spec, even where a file or folder of that name exists
        data = load_dataset(spec)
        images, name = data.x, data.name
    elif p.is_dir():
        images, name = load_folder(str(p)).x, None
    elif p.suffix == ".npz" and p.is_file():
        stats = _npz_stats(p)
        if stats is not None:
            return stats
        images, name = load_npz(str(p)).x, None
    else:
        data = load_dataset(spec)
        images, name = data.x, data.name
    if images.ndim != 4:
        raise AntError(f"FID needs images; {spec} holds points")
    if len(images) < MIN_IMAGES:
        raise AntError(f"FID needs at least {MIN_IMAGES} images, {spec} has {len(images)}")
    return images, name


def side_stats(
    side: Stats | tuple[Tensor, str | None], net: Inception, progress: bool = True
) -> Stats:
    """Statistics of a loaded side; a data set's are cached, a folder's or file's are not."""
    first, name = side
    if isinstance(first, np.ndarray):  # stored (mu, sigma)
        return first, np.asarray(name)
    if name is None:
        return image_stats(first, net, progress)
    return reference_stats(first, name, net, progress)


def _npz_stats(path: Path) -> Stats | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                return None
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, ValueError) as exc:
        raise AntError(f"cannot read npz {path}: {exc}".splitlines()[0]) from exc
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise AntError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return mu, sigma


def inception_fid(a: str, b: str, device: str = "cpu", progress: bool = True) -> float:
    """The standard FID between two sides (see the module docstring)."""
    sides = [load_side(a), load_side(b)]
    net = Inception(device)
    return fid_from_stats(*(side_stats(side, net, progress) for side in sides))

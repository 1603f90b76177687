"""Sample-quality metrics: one entry point, `evaluate_samples`, for images and 2-D points.

Images: Frechet distance `fd` on the features of the project's own classifier (features.py; the
Inception FID of the paper needs weights we do not have, see fid.py), improved precision/recall,
and classifier statistics. Points: sliced Wasserstein, MMD^2 and the true-density log-likelihood.
All numbers are plain floats/ints (JSON-friendly) and deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.metrics.classifier import classifier_stats
from antdiff.metrics.features import FeatureNet, get_feature_net
from antdiff.metrics.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from antdiff.metrics.heldout import (
    draw_heldout_triples,
    evaluate_heldout,
    heldout_loss,
    heldout_losses,
)
from antdiff.metrics.prdc import precision_recall
from antdiff.metrics.toy import (
    GaussianMixture,
    gmm_log_likelihood,
    mixture_quality,
    mmd2_rbf,
    sliced_wasserstein,
)

__all__ = [
    "FeatureNet",
    "GaussianMixture",
    "classifier_stats",
    "draw_heldout_triples",
    "evaluate_heldout",
    "evaluate_samples",
    "fd_reference",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "get_feature_net",
    "gmm_log_likelihood",
    "heldout_loss",
    "heldout_losses",
    "mixture_quality",
    "mmd2_rbf",
    "precision_recall",
    "sliced_wasserstein",
]

RANGE_TOL = 0.05  # samplers may overshoot [-1, 1] slightly; such values are clipped


def _check_images(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim not in (3, 4) or x.shape[0] == 0 or (x.ndim == 4 and x.shape[1] not in (1, 3)):
        raise AntError(
            f"{name} must be a non-empty [N,H,W] or [N,C,H,W] batch; got {tuple(x.shape)}"
        )
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise AntError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
        raise AntError(f"{name} must lie in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}]")
    return x.clamp(-1.0, 1.0)


def _mixture(mixture: GaussianMixture | Mapping) -> GaussianMixture:
    if isinstance(mixture, GaussianMixture):
        return mixture
    try:
        return GaussianMixture(mixture["means"], float(mixture["std"]), mixture.get("weights"))
    except (KeyError, TypeError) as err:
        raise AntError(
            "mixture must give 'means' [M, 2] and 'std' (and optional 'weights')"
        ) from err


def evaluate_samples(
    samples: Tensor,
    real: Tensor,
    *,
    kind: Literal["image", "points"],
    labels: Tensor | None = None,
    feature_net: FeatureNet | None = None,
    mixture: GaussianMixture | Mapping | None = None,
    k: int = 3,
    seed: int = 0,
) -> dict:
    """Compare generated `samples` with `real` data; returns a flat dict of numbers.

    kind="image": samples/real in [-1, 1]; keys fd, precision, recall, density, coverage,
    confidence, class_kl, inception_score (+ accuracy when the intended `labels` are given),
    num_samples, num_real, feature_net. The default net is the digits one; images of another
    size are resized to it. FD grows as N shrinks: compare numbers at the same N (fd_reference).
    kind="points": keys swd, mmd2 (unbiased MMD^2, can be slightly < 0), loglik (mean nats per
    point, when the true `mixture` is known; then also in_3std and mode_tv), num_samples,
    num_real.
    """
    if kind == "image":
        x, r = _check_images(samples, "samples"), _check_images(real, "real images")
        net = feature_net if feature_net is not None else get_feature_net("digits")
        fx, fr = net.features(x), net.features(r)
        out: dict = {"num_samples": len(x), "num_real": len(r)}
        out["fd"] = frechet_distance(fx, fr)
        pr = precision_recall(fr, fx, k=k)
        out.update(pr)
        out.update(classifier_stats(net.logits(x), labels))
        if net.recipe is not None:
            out["feature_net"] = f"{net.recipe.dataset}-{net.recipe.key()}"
        return out
    if kind == "points":
        out = {"num_samples": len(samples), "num_real": len(real)}
        out["swd"] = sliced_wasserstein(samples, real, seed=seed)
        out["mmd2"] = mmd2_rbf(samples, real)
        if mixture is not None:
            out["loglik"] = gmm_log_likelihood(samples, _mixture(mixture))
            out.update(mixture_quality(samples, _mixture(mixture)))
        return out
    raise AntError(f"kind must be 'image' or 'points'; got {kind!r}")


def fd_reference(
    real: Tensor, *, feature_net: FeatureNet | None = None, seed: int = 0
) -> dict[str, float]:
    """The floor and ceiling to report beside any FD: know the noise before comparing FDs.

    fd_halves: FD between two random halves of the real set (what a perfect model would get at
    half the sample size); fd_noise: FD between the real set and as many uniform-noise images.
    """
    r = _check_images(real, "real images")
    net = feature_net if feature_net is not None else get_feature_net("digits")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(r), generator=gen)
    half = len(r) // 2
    noise = torch.rand(r.shape, generator=gen) * 2.0 - 1.0
    fr = net.features(r)
    return {
        "fd_halves": frechet_distance(fr[perm[:half]], fr[perm[half : 2 * half]]),
        "fd_noise": frechet_distance(fr, net.features(noise)),
        "num_real": len(r),
    }

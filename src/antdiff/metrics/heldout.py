"""Held-out denoising loss per interval of timesteps, on a fixed set of (image, t, noise) triples.

Why: ANT (Go et al. 2023) treats each interval of timesteps as a task, and its claims are about
moving error between noise levels. The denoising loss on images never trained on, measured on
the SAME triples for every model (a paired comparison), is far less noisy than any sample metric
and shows per interval where a method helps or hurts (the negative-transfer picture, O2).

The triples are a pure function of (images, intervals, n_per_interval, seed): t is uniform on
each inclusive interval [l, r], images are drawn by a seeded permutation (without replacement
while possible) and noise is standard normal from a CPU generator, so the draw does not depend
on the device or on the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from antdiff.errors import AntError

LossFn = Callable[..., Tensor]  # (x0, t, noise) -> [B]; with labels: (x0, t, noise, y) -> [B]


@dataclass(frozen=True)
class HeldoutTriples:
    """x0 [N, ...], t [N] (int64), noise [N, ...], the interval index of each triple [N] and,
    for a class-conditional model, each image's label y [N] (else None)."""

    x0: Tensor
    t: Tensor
    noise: Tensor
    interval: Tensor
    intervals: tuple[tuple[int, int], ...]
    y: Tensor | None = None

    @property
    def num_timesteps(self) -> int:
        return self.intervals[-1][1] + 1


def check_intervals(intervals: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """Validate inclusive [l, r] pairs covering 0..T-1 contiguously, in order."""
    pairs = tuple((int(lr[0]), int(lr[1])) for lr in intervals)
    if not pairs:
        raise AntError("interval partition is empty")
    expect = 0
    for l, r in pairs:
        if l != expect or r < l:
            raise AntError(
                f"intervals must be contiguous inclusive [l, r] pairs from 0; got {list(pairs)}"
            )
        expect = r + 1
    return pairs


def draw_heldout_triples(
    images: Tensor,
    intervals: Sequence[Sequence[int]],
    *,
    n_per_interval: int = 64,
    seed: int = 0,
    labels: Tensor | None = None,
) -> HeldoutTriples:
    """Draw n_per_interval (image, t, noise) triples per interval, deterministically from seed.

    `labels` [N] (optional) go along with their images; they change no random draw."""
    pairs = check_intervals(intervals)
    if images.ndim < 2 or len(images) == 0:
        raise AntError(f"held-out images must be a non-empty batch; got {tuple(images.shape)}")
    if n_per_interval < 1:
        raise AntError(f"n_per_interval must be >= 1; got {n_per_interval}")
    images = images.detach().cpu().to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    total = n_per_interval * len(pairs)
    reps = math.ceil(total / len(images))
    idx = torch.cat([torch.randperm(len(images), generator=gen) for _ in range(reps)])[:total]
    lo = torch.tensor([l for l, _ in pairs]).repeat_interleave(n_per_interval)
    width = torch.tensor([r - l + 1 for l, r in pairs]).repeat_interleave(n_per_interval)
    t = lo + (torch.rand(total, generator=gen, dtype=torch.float64) * width).long()
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=gen)
    interval = torch.arange(len(pairs)).repeat_interleave(n_per_interval)
    y = None
    if labels is not None:
        if labels.shape != (len(images),):
            raise AntError(f"labels must be [{len(images)}]; got {tuple(labels.shape)}")
        y = labels.detach().cpu().long()[idx]
    return HeldoutTriples(x0, t, noise, interval, pairs, y)


def _summary(losses: Tensor) -> dict[str, float]:
    n = len(losses)
    sem = float(losses.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(losses.mean()), "sem": sem, "n": n}


@torch.no_grad()
def heldout_losses(
    loss_fn: LossFn,
    triples: HeldoutTriples,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Per-triple losses [N] (float64, CPU) of `loss_fn(x0, t, noise[, y]) -> [B]`."""
    parts = []
    for i in range(0, len(triples.t), batch_size):
        sl = slice(i, i + batch_size)
        args = [triples.x0[sl], triples.t[sl], triples.noise[sl]]
        if triples.y is not None:
            args.append(triples.y[sl])
        out = loss_fn(*(a.to(device) for a in args))
        out = torch.as_tensor(out).detach().reshape(-1).cpu().to(torch.float64)
        if out.shape[0] != triples.t[sl].shape[0]:
            raise AntError(f"loss_fn must return one loss per sample; got shape {tuple(out.shape)}")
        parts.append(out)
    return torch.cat(parts)


def evaluate_heldout(
    loss_fn: LossFn,
    triples: HeldoutTriples,
    *,
    num_bins: int = 10,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict:
    """Mean loss (+ standard error) overall, per interval and per equal-width timestep bin.

    `loss_fn(x0, t, noise) -> [B]` per-sample losses (the caller binds model, schedule and
    prediction type, e.g. eps or v MSE of the EMA model); `loss_fn(x0, t, noise, y)` when the
    triples carry labels.
    """
    losses = heldout_losses(loss_fn, triples, batch_size=batch_size, device=device)
    num_t = triples.num_timesteps
    num_bins = max(1, min(num_bins, num_t))
    edges = [round(b * num_t / num_bins) for b in range(num_bins + 1)]
    bins = []
    for a, b in itertools.pairwise(edges):
        mask = (triples.t >= a) & (triples.t < b)
        if mask.any():
            bins.append({"range": [a, b - 1], **_summary(losses[mask])})
    return {
        **_summary(losses),
        "intervals": [
            {"interval": [l, r], **_summary(losses[triples.interval == k])}
            for k, (l, r) in enumerate(triples.intervals)
        ],
        "bins": bins,
    }


def heldout_loss(
    loss_fn: LossFn,
    images: Tensor,
    intervals: Sequence[Sequence[int]],
    *,
    seed: int = 0,
    n_per_interval: int = 64,
    num_bins: int = 10,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    labels: Tensor | None = None,
) -> dict:
    """Draw the fixed triples (`draw_heldout_triples`) and evaluate `loss_fn` on them."""
    triples = draw_heldout_triples(
        images, intervals, n_per_interval=n_per_interval, seed=seed, labels=labels
    )
    return evaluate_heldout(
        loss_fn, triples, num_bins=num_bins, batch_size=batch_size, device=device
    )

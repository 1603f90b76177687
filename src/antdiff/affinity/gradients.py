"""The task-affinity estimator (Go et al. 2023, Sec. 2.1): per-bin loss gradients of a model on a
fixed probe, sketched on the fly, and their cosine matrix.

The T timesteps are grouped into B equal bins; the task loss of bin b is the mean epsilon (or v)
MSE of a FIXED probe batch (same images, same noise for every bin and every call: common random
numbers), each probe sample at its own evenly spaced timestep inside the bin. The model is in
eval mode and sees the true labels (no label dropout); the loss is unweighted (the paper's L_t).

Memory. The official script (`task_affinity_score.py`) keeps T full gradients. Here each bin's
gradient is projected on the fly (sketch.py); Gaussian sketches project `group` gradients
together so each random block serves `group` bins, at G x P floats of memory. The matrix is one
product of the row-normalised sketches, N N^T. `sketch_dim=0` keeps the exact gradients
(B x P floats). Used by `antdiff affinity` (antdiff.analysis.affinity) and inside training by
`--clusters affinity:K:auto` (auto.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from antdiff.affinity.sketch import BLOCK_ELEMS, GradientSketch, cosine_matrix
from antdiff.diffusion import FlowPath, per_sample_loss
from antdiff.errors import AntError

DEFAULT_SKETCH = 1024
GAUSSIAN_GROUP = 16  # bins projected together by the Gaussian sketch


# ----------------------------------------------------------------------------- probe and bins
def bin_edges(timesteps: int, bins: int) -> np.ndarray:
    """B + 1 edges of B equal-width timestep bins: bin b is [edges[b], edges[b+1] - 1]."""
    if not 2 <= bins <= timesteps:
        raise AntError(f"--bins must be in 2..{timesteps} (the run's timesteps), got {bins}")
    return np.array([b * timesteps // bins for b in range(bins + 1)], dtype=np.int64)


def probe_timesteps(edges: np.ndarray, n: int) -> Tensor:
    """[B, n]: probe sample i of bin b at l_b + floor((i + 1/2) w_b / n) (evenly spaced)."""
    lo = torch.as_tensor(edges[:-1], dtype=torch.long)[:, None]
    width = torch.as_tensor(np.diff(edges), dtype=torch.float64)[:, None]
    pos = (torch.arange(n, dtype=torch.float64)[None, :] + 0.5) * width / n
    return lo + pos.long()


@dataclass
class Probe:
    """The fixed probe batch: images (or points), noise, labels (None if unconditional)."""

    x0: Tensor
    noise: Tensor
    labels: Tensor | None


def make_probe(x: Tensor, labels: Tensor | None, n: int, seed: int) -> Probe:
    if not 1 <= n <= len(x):
        raise AntError(f"--probe must be in 1..{len(x)} (the training set size), got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:n]
    noise = torch.randn((n, *x.shape[1:]), generator=g)
    return Probe(x[idx].float(), noise, None if labels is None else labels[idx].long())


# ----------------------------------------------------------------------------- gradients
@dataclass
class LossSetup:
    """What the per-bin loss needs besides the model."""

    path: Tensor | FlowPath  # a schedule's `loss_path` (DDPM: alphas_cumprod)
    prediction: str = "epsilon"
    micro_batch: int = 64  # forward/backward at most this many probe samples at once


def bin_gradient(
    model: nn.Module, probe: Probe, t: Tensor, setup: LossSetup, params: list[nn.Parameter]
) -> Tensor:
    """Flat gradient [P] of the bin loss mean_i L(x0_i, t_i, eps_i) (missing grads are zeros)."""
    dev = params[0].device
    for p in params:
        p.grad = None
    n = len(t)
    for a in range(0, n, setup.micro_batch):
        sl = slice(a, a + setup.micro_batch)
        y = None if probe.labels is None else probe.labels[sl].to(dev)
        x0, noise = probe.x0[sl].to(dev), probe.noise[sl].to(dev)
        path = setup.path.to(dev) if isinstance(setup.path, Tensor) else setup.path
        loss = per_sample_loss(
            model, x0, t[sl].to(dev), noise, path, prediction=setup.prediction, y=y
        )
        (loss.sum() / n).backward()
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
            for p in params
        ]
    )


def affinity_matrix(
    model: nn.Module,
    probe: Probe,
    edges: np.ndarray,
    setup: LossSetup,
    *,
    sketch_dim: int = DEFAULT_SKETCH,
    seed: int = 0,
    projection: str = "countsketch",
    group: int | None = None,
    block_elems: int = BLOCK_ELEMS,
) -> np.ndarray:
    """B x B cosine matrix of the bin-loss gradients at the model's current weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    ts = probe_timesteps(edges, len(probe.x0))
    was_training = model.training
    model.eval()
    try:
        if sketch_dim == 0:  # B x P floats, filled in place (no list + stack copy)
            rows = torch.empty(len(ts), sum(p.numel() for p in params), device=params[0].device)
            for b, t in enumerate(ts):
                rows[b] = bin_gradient(model, probe, t, setup, params)
        else:
            sketch = GradientSketch(
                [p.numel() for p in params],
                sketch_dim,
                seed,
                block_elems,
                params[0].device,
                projection,
            )
            group = group or (GAUSSIAN_GROUP if projection == "gaussian" else 1)
            rows = _sketched_rows(model, probe, ts, setup, params, sketch, max(1, group))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return cosine_matrix(rows)


def _sketched_rows(
    model: nn.Module,
    probe: Probe,
    ts: Tensor,
    setup: LossSetup,
    params: list[nn.Parameter],
    sketch: GradientSketch,
    group: int,
) -> Tensor:
    """[B, M] sketches, `group` bins' gradients at a time (never all B gradients)."""
    out = []
    for a in range(0, len(ts), group):
        grads = torch.stack([bin_gradient(model, probe, t, setup, params) for t in ts[a:][:group]])
        out.append(sketch.project(grads).cpu())
        del grads
    return torch.cat(out)

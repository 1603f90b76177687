"""Task affinity between denoising tasks (Go et al. 2023, Sec. 2.1 and observation O1).

    TAS(t1, t2) = 1/|S| sum_{s in S} cos(grad L_t1(theta_s), grad L_t2(theta_s))

over a set S of training checkpoints. The T timesteps are grouped into B equal bins; the task
loss of bin b is the mean epsilon (or v) MSE of a FIXED probe batch (same images, same noise for
every bin and checkpoint: common random numbers), each probe sample at its own evenly spaced
timestep inside the bin. The model is in eval mode and sees the true labels (no label dropout);
the loss is unweighted (the paper's L_t, not the run's Min-SNR/P2 weights).

Memory. The official script (`task_affinity_score.py`) keeps T full gradients. Here each bin's
gradient is projected on the fly (sketch.py); Gaussian sketches project `group` gradients
together so each random block serves `group` bins, at G x P floats of memory. The matrix is one
product of the row-normalised sketches, N N^T. `sketch_dim=0` keeps the exact gradients
(B x P floats).

Weights: the raw training iterates by default (the paper averages over training iterations);
EMA weights on request. Each checkpoint uses its own projection seed, derived from (seed, step),
so the sketch noise averages down across checkpoints and the average over checkpoints equals
the mean of the per-checkpoint matrices computed one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from antdiff import build
from antdiff.analysis.sketch import BLOCK_ELEMS, GradientSketch, block_seed, cosine_matrix
from antdiff.diffusion import per_sample_loss
from antdiff.errors import AntError
from antdiff.report import plot_affinity
from antdiff.rundir import RunDir

DEFAULT_BINS = 50
DEFAULT_PROBE = 64
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

    alphas_cumprod: Tensor
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
        x0, noise, alphas = probe.x0[sl].to(dev), probe.noise[sl].to(dev), setup.alphas_cumprod
        loss = per_sample_loss(
            model, x0, t[sl].to(dev), noise, alphas.to(dev), prediction=setup.prediction, y=y
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


# ----------------------------------------------------------------------------- the analysis
@dataclass
class AffinityResult:
    affinity: np.ndarray  # [B, B] mean over checkpoints
    per_checkpoint: np.ndarray  # [S, B, B]
    edges: np.ndarray  # [B + 1]
    steps: list[int]
    log_snr: np.ndarray  # [B] log-SNR at each bin's centre timestep
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[:-1] + self.edges[1:] - 1)

    def correlations(self) -> dict[str, float]:
        """Spearman rho between affinity and |t1 - t2| and |log-SNR gap| over pairs b1 < b2."""
        from scipy.stats import spearmanr

        i, j = np.triu_indices(len(self.centers), k=1)
        a = self.affinity[i, j]
        gap_t = np.abs(self.centers[i] - self.centers[j])
        gap_s = np.abs(self.log_snr[i] - self.log_snr[j])
        return {
            "spearman_gap_t": float(spearmanr(a, gap_t)[0]),
            "spearman_gap_logsnr": float(spearmanr(a, gap_s)[0]),
        }


def run_affinity(
    run_dir: str | Path,
    *,
    checkpoints: str = "last",
    bins: int = DEFAULT_BINS,
    probe: int = DEFAULT_PROBE,
    sketch_dim: int = DEFAULT_SKETCH,
    projection: str = "countsketch",
    group: int | None = None,
    ema: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> AffinityResult:
    """Task affinity of a run, averaged over the chosen checkpoints (module docstring)."""
    if sketch_dim < 0:
        raise AntError(f"--sketch-dim must be >= 0 (0 = exact), got {sketch_dim}")
    run = RunDir.open(run_dir)
    cfg, info = run.cfg, run.info
    paths = run.select_checkpoints(checkpoints)
    edges = bin_edges(cfg.timesteps, bins)
    data, _ = build.load_data(cfg)
    labels = data.labels if info.num_classes else None
    prb = make_probe(data.x, labels, probe, seed)
    schedule = build.schedule(cfg)
    setup = LossSetup(schedule.alphas_cumprod.float(), cfg.prediction, cfg.batch_size)
    mats, steps = [], []
    for path in paths:
        ckpt = run.load_checkpoint(path)
        model = build.trained_model(run, ckpt, ema=ema, device=device)
        mats.append(affinity_matrix(model, prb, edges, setup, sketch_dim=sketch_dim,
                                    seed=block_seed(seed, ckpt.step), projection=projection,
                                    group=group))  # fmt: skip
        steps.append(ckpt.step)
    per = np.stack(mats)
    centre = ((edges[:-1] + edges[1:] - 1) // 2).astype(int)
    settings = {
        "run": str(run_dir),
        "checkpoints": checkpoints,
        "bins": bins,
        "probe": probe,
        "sketch_dim": sketch_dim,
        "projection": projection,
        "weights": "ema" if ema else "raw",
        "seed": seed,
        "timesteps": cfg.timesteps,
        "schedule": cfg.schedule,
        "prediction": cfg.prediction,
        "labels": "true" if labels is not None else "none",
        "model": info.model,
        "dataset": cfg.dataset,
    }
    log_snr = schedule.snr_numpy(log=True)[centre]
    return AffinityResult(per.mean(0), per, edges, steps, log_snr, settings)


# ----------------------------------------------------------------------------- outputs
def save_affinity(result: AffinityResult, out_dir: str | Path) -> Path:
    """affinity.npz (affinity, edges, per_checkpoint, steps, log_snr, settings), affinity.npy,
    affinity.json (settings + rank correlations) and affinity.png; returns the .npz path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**result.settings, "steps": result.steps, **result.correlations()}
    npz = out / "affinity.npz"
    with open(npz, "wb") as f:
        np.savez(
            f,
            affinity=result.affinity,
            edges=result.edges,
            steps=np.array(result.steps),
            per_checkpoint=result.per_checkpoint,
            log_snr=result.log_snr,
            settings=np.array(json.dumps(summary)),
        )
    np.save(out / "affinity.npy", result.affinity)
    (out / "affinity.json").write_text(json.dumps(summary, indent=1))
    plot_affinity(result.affinity, result.edges, result.log_snr, out / "affinity.png")
    return npz


def summary_line(result: AffinityResult) -> str:
    c, s = result.correlations(), result.settings
    sketch = (
        "exact gradients" if s["sketch_dim"] == 0 else f"{s['projection']} dim {s['sketch_dim']}"
    )
    return (
        f"task affinity over {s['bins']} bins, {len(result.steps)} checkpoint(s) (steps "
        f"{','.join(map(str, result.steps))}; {s['weights']} weights, probe {s['probe']}, "
        f"{sketch}): Spearman rho(affinity, |t1-t2|) = {c['spearman_gap_t']:+.3f}, "
        f"rho(affinity, |log-SNR gap|) = {c['spearman_gap_logsnr']:+.3f} "
        "(O1 predicts < 0)"
    )

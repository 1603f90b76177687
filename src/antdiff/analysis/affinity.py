"""Task affinity between denoising tasks (Go et al. 2023, Sec. 2.1 and observation O1).

    TAS(t1, t2) = 1/|S| sum_{s in S} cos(grad L_t1(theta_s), grad L_t2(theta_s))

over a set S of training checkpoints. The T timesteps are grouped into B equal bins; the task
loss of bin b is the mean epsilon (or v) MSE of a FIXED probe batch (same images, same noise for
every bin and checkpoint: common random numbers), each probe sample at its own evenly spaced
timestep inside the bin. The model is in eval mode and sees the true labels (no label dropout);
the loss is unweighted (the paper's L_t, not the run's Min-SNR/P2 weights).

Memory. The official script keeps T full gradients (reference defects 9.10-9.13). Here each bin's
gradient is projected on the fly, s_b = g_b R, by a seeded random R [P, M] that is generated
block by block per parameter and never held whole: count-sketch (sparse Rademacher, O(P) work,
the default) or Gaussian (O(P M) work; `group` gradients are projected together so each random
block serves `group` bins, at G x P floats of memory). The matrix is one product of the
row-normalised sketches, N N^T. A sketch estimates a cosine rho with standard error about
(1 - rho^2) / sqrt(M). `sketch_dim=0` keeps the exact gradients (B x P floats).

Weights: the raw training iterates by default (the paper averages over training iterations);
EMA weights on request. Each checkpoint uses its own projection seed, derived from (seed, step),
so the sketch noise averages down across checkpoints and the average over checkpoints equals
the mean of the per-checkpoint matrices computed one at a time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from antdiff.checkpoint import EMA, STATE, WEIGHTS, checkpoint_dir, latest_checkpoint
from antdiff.errors import AntError

DEFAULT_BINS = 50
DEFAULT_PROBE = 64
DEFAULT_SKETCH = 1024
GAUSSIAN_GROUP = 16  # bins projected together by the Gaussian sketch
BLOCK_ELEMS = 1 << 22  # largest random block (floats) generated at once: 16 MiB


# ----------------------------------------------------------------------------- the sketch
def _block_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


PROJECTIONS = ("countsketch", "gaussian")


class GradientSketch:
    """Seeded random projection of flattened gradients [G, P] -> [G, M]; R [P, M] never exists.

    gaussian: s = g R / sqrt(M) with R_ij ~ N(0, 1), rows of each parameter's slice of R drawn
    block by block (at most `block_elems` floats at a time); O(P M) work per gradient.
    countsketch (feature hashing, a sparse Rademacher R with one +-1 per row): s_h(i) += sgn(i)
    g_i; O(P) work, and its inner-product variance never exceeds the Gaussian one.
    Block j of parameter i is drawn from a generator seeded by (seed, i, j).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        dim: int,
        seed: int = 0,
        block_elems: int = BLOCK_ELEMS,
        device: torch.device | str = "cpu",
        kind: str = "countsketch",
    ) -> None:
        if dim < 1:
            raise AntError(f"sketch dimension must be >= 1, got {dim}")
        if kind not in PROJECTIONS:
            raise AntError(f"unknown projection {kind!r}; choose from {', '.join(PROJECTIONS)}")
        self.sizes, self.dim, self.seed, self.kind = [int(n) for n in sizes], int(dim), seed, kind
        per_row = self.dim if kind == "gaussian" else 2
        self.rows = max(1, int(block_elems) // per_row)
        self.device = torch.device(device)
        self.max_block = 0  # most random numbers held at once so far, for tests

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def blocks(self) -> Iterator[tuple[int, int, Tensor, Tensor | None]]:
        """(start, stop) into the flat gradient and the block of R: a dense [rows, M] block
        (gaussian) or bucket indices and signs [rows] (countsketch)."""
        offset = 0
        gen = torch.Generator(self.device)
        for i, n in enumerate(self.sizes):
            for a in range(0, n, self.rows):
                b = min(n, a + self.rows)
                gen.manual_seed(_block_seed(self.seed, i, a // self.rows))
                if self.kind == "gaussian":
                    block = torch.randn(b - a, self.dim, generator=gen, device=self.device)
                    sign = None
                else:
                    block = torch.randint(0, self.dim, (b - a,), generator=gen, device=self.device)
                    bits = torch.randint(0, 2, (b - a,), generator=gen, device=self.device)
                    sign = bits * 2.0 - 1.0
                self.max_block = max(self.max_block, block.numel() * (1 if sign is None else 2))
                yield offset + a, offset + b, block, sign
            offset += n

    def project(self, grads: Tensor) -> Tensor:
        """[G, P] flat gradients -> [G, M] sketches (float32)."""
        if grads.ndim != 2 or grads.shape[1] != self.num_params:
            raise AntError(f"expected [G, {self.num_params}] gradients, got {tuple(grads.shape)}")
        out = torch.zeros(grads.shape[0], self.dim, device=self.device)
        for a, b, block, sign in self.blocks():
            g = grads[:, a:b].to(self.device)
            if sign is None:
                out += g @ block
            else:
                out.index_add_(1, block, g * sign)
        return out / math.sqrt(self.dim) if self.kind == "gaussian" else out


def cosine_matrix(rows: Tensor) -> np.ndarray:
    """Pairwise cosines of the rows [B, D] as one product of normalised rows; exact unit diagonal
    and symmetric (float64 result; one float32 copy of the rows, so exact gradients cost 2 B P
    floats at most)."""
    x = rows.detach().float()
    norms = x.norm(dim=1, keepdim=True)  # float32: a float64 norm would copy all rows
    if (norms == 0).any():
        bad = torch.nonzero(norms.squeeze(1) == 0).flatten().tolist()
        raise AntError(f"zero loss gradient for bin(s) {bad}: the cosine is undefined")
    n = x / norms
    c = (n @ n.T).double().cpu().numpy()
    c = np.clip(0.5 * (c + c.T), -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


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
    from antdiff.diffusion import per_sample_loss

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


# ----------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    found = [
        p
        for p in sorted(root.glob("step_*"))
        if all((p / f).is_file() for f in (WEIGHTS, EMA, STATE))
    ]
    if not found:
        raise AntError(f"no checkpoint in {root}")
    return found


def select_checkpoints(run_dir: str | Path, spec: str = "last") -> list[Path]:
    """`last`, `all` (every kept checkpoint), or a comma list of steps such as `500,1000`."""
    found = list_checkpoints(run_dir)
    if spec == "last":
        return [latest_checkpoint(run_dir)]
    if spec == "all":
        return found
    steps = {int(p.name.removeprefix("step_")): p for p in found}
    if not re.fullmatch(r"\d+(,\d+)*", spec):
        raise AntError(f"--checkpoints must be last, all or a comma list of steps, got {spec!r}")
    chosen = []
    for s in dict.fromkeys(int(v) for v in spec.split(",")):
        if s not in steps:
            have = ", ".join(map(str, steps))
            raise AntError(f"no checkpoint at step {s} in {run_dir} (kept steps: {have})")
        chosen.append(steps[s])
    return chosen


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
    from antdiff.checkpoint import load_checkpoint
    from antdiff.config import load_run_config
    from antdiff.schedule import NoiseSchedule
    from antdiff.train import load_data, make_model

    if sketch_dim < 0:
        raise AntError(f"--sketch-dim must be >= 0 (0 = exact), got {sketch_dim}")
    cfg = load_run_config(run_dir)
    info = Path(run_dir) / "run.json"
    if not info.is_file():
        raise AntError(f"{run_dir} has no run.json")
    paths = select_checkpoints(run_dir, checkpoints)
    edges = bin_edges(cfg.timesteps, bins)
    meta = json.loads(info.read_text())
    data, _ = load_data(cfg)
    labels = data.labels if meta["num_classes"] else None
    prb = make_probe(data.x, labels, probe, seed)
    schedule = NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)
    setup = LossSetup(schedule.alphas_cumprod.float(), cfg.prediction, cfg.batch_size)
    model = make_model(cfg, meta).to(device)
    mats, steps = [], []
    for path in paths:
        weights, ema_weights, state = load_checkpoint(path)
        model.load_state_dict({**weights, **ema_weights} if ema else weights)
        step = int(state["step"])
        mats.append(
            affinity_matrix(
                model,
                prb,
                edges,
                setup,
                sketch_dim=sketch_dim,
                seed=_block_seed(seed, step),
                projection=projection,
                group=group,
            )
        )
        steps.append(step)
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
        "model": meta["model"],
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
    plot_affinity(result, out / "affinity.png")
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


def plot_affinity(result: AffinityResult, path: str | Path) -> None:
    """Figure-1-style heat maps on timestep and log-SNR axes, plus mean affinity vs bin gap."""
    from matplotlib.figure import Figure

    A, edges = result.affinity, result.edges
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_t, ax_s, ax_g = fig.subplots(1, 3)
    vmin = min(0.0, float(A.min()))
    mesh = ax_t.pcolormesh(edges, edges, A, vmin=vmin, vmax=1, cmap="viridis")
    ax_t.set(xlabel="timestep t", ylabel="timestep t", title="task affinity (timestep)")
    ax_t.invert_yaxis()
    s_edges = _log_snr_edges(result)
    ax_s.pcolormesh(s_edges, s_edges, A, vmin=vmin, vmax=1, cmap="viridis")
    ax_s.set(xlabel="log-SNR", ylabel="log-SNR", title="task affinity (log-SNR)")
    fig.colorbar(mesh, ax=[ax_t, ax_s], shrink=0.85)
    gaps = np.arange(len(A))
    mean = [np.diagonal(A, d).mean() for d in gaps]
    width = float(np.diff(edges).mean())
    ax_g.plot(gaps * width, mean, marker=".")
    ax_g.set(xlabel="|t1 - t2|", ylabel="mean affinity", title="affinity decays with the gap?")
    ax_g.axhline(0, color="grey", lw=0.6)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")


def _log_snr_edges(result: AffinityResult) -> np.ndarray:
    """Bin edges on the log-SNR axis (interpolated between bin centres, extrapolated at ends)."""
    c = result.log_snr
    if len(c) < 2:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])

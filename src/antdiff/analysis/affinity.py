"""Task affinity between denoising tasks of a run (Go et al. 2023, Sec. 2.1, observation O1):

    TAS(t1, t2) = 1/|S| sum_{s in S} cos(grad L_t1(theta_s), grad L_t2(theta_s))

over a set S of the run's checkpoints, by the estimator of antdiff.affinity (bins, a fixed probe,
sketched gradients). Weights: the raw training iterates by default (the paper averages over
training iterations); EMA weights on request. Each checkpoint uses its own projection seed,
derived from (seed, step), so the sketch noise averages down across checkpoints and the average
over checkpoints equals the mean of the per-checkpoint matrices computed one at a time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from antdiff import build, checkpoint
from antdiff.affinity.gradients import (
    DEFAULT_SKETCH,
    LossSetup,
    affinity_matrix,
    bin_edges,
    make_probe,
)
from antdiff.affinity.sketch import block_seed
from antdiff.errors import AntError, replacing
from antdiff.report import plot_affinity
from antdiff.rundir import RunDir

DEFAULT_BINS = 50
DEFAULT_PROBE = 64


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
    setup = LossSetup(schedule.loss_path("cpu"), cfg.prediction, cfg.batch_size)
    mats, steps = [], []
    for path in paths:
        try:  # the newest that loads, when it is `last`: a running training prunes old ones
            ckpt = run.load_checkpoint(None if checkpoints == "last" else path)
        except checkpoint.Vanished as e:
            if checkpoints != "all":
                raise
            print(f"antdiff: warning: {e}; skipped", file=sys.stderr)
            continue
        model = build.trained_model(run, ckpt, ema=ema, device=device)
        mats.append(
            affinity_matrix(
                model,
                prb,
                edges,
                setup,
                sketch_dim=sketch_dim,
                seed=block_seed(seed, ckpt.step),
                projection=projection,
                group=group,
            )
        )
        steps.append(ckpt.step)
    if not mats:
        raise AntError(f"every checkpoint of {run_dir} was pruned while it was read; try again")
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
    with replacing(npz) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            affinity=result.affinity,
            edges=result.edges,
            steps=np.array(result.steps),
            per_checkpoint=result.per_checkpoint,
            log_snr=result.log_snr,
            settings=np.array(json.dumps(summary)),
        )
    with replacing(out / "affinity.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, result.affinity)
    with replacing(out / "affinity.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
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

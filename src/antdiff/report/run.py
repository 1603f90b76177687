"""One self-contained HTML page per run, from the run's records only: samples, per-task losses and
method weights, the interval tasks, the evaluation and any analysis of the run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from antdiff import build
from antdiff.errors import replacing
from antdiff.metricrows import EvalRow, StepRow
from antdiff.metrics.declare import METRICS
from antdiff.report.analysis import affinity_section, interval_labels
from antdiff.report.figures import (
    plot_affinity,
    plot_eval_curves,
    plot_partition,
    plot_task_curves,
)
from antdiff.report.html import Section, img_file, page, png, table
from antdiff.rundir import RunDir


def evaluation_section(result: dict[str, Any]) -> Section:
    """The evaluation as a person reads it: a table of the numbers, the held-out chart."""
    rows = [
        [m.name, m.format(result[m.name]), html.escape(m.label)]
        for m in METRICS.values()
        if isinstance(result.get(m.name), float | int)
    ]
    lo, hi = result.get("guidance_interval") or (0, 1)  # absent: older runs, the whole range
    limited = f" on noise levels {lo:g}-{hi:g}" if (lo, hi) != (0, 1) else ""
    how = (
        f"{result.get('num_samples', '?')} samples at step {result.get('step', '?')}, "
        f"{result.get('sampler')} sampler, {result.get('sample_steps')} steps, guidance "
        f"{result.get('guidance')}{limited}, seed {result.get('seed')}."
    )
    body = f"<p>{html.escape(how)}</p>" + table(["metric", "value", "meaning"], rows)
    heldout = result.get("heldout")
    if heldout:
        body += (
            f"<p>Held-out denoising loss (unweighted, on fixed image/t/noise triples from "
            f"images never trained on): {heldout['mean']:.5f} overall.</p>"
            + png(_heldout_bars(heldout["intervals"]))
        )
    return "Evaluation", body


def _heldout_bars(intervals: list[dict[str, Any]]) -> Figure:
    labels = interval_labels([iv["interval"] for iv in intervals])
    mean = np.array([iv["mean"] for iv in intervals])
    sem = np.array([iv["sem"] or 0.0 for iv in intervals])
    fig = Figure(figsize=(6, 2.8))
    ax = fig.subplots()
    ax.bar(np.arange(len(mean)), mean, yerr=sem, capsize=3)
    ax.set_xticks(np.arange(len(mean)), labels, fontsize=8)
    ax.set(xlabel="interval of t", ylabel="held-out loss", yscale="log")
    return fig


def tasks_section(run: RunDir, train_seconds: float, log_snr: np.ndarray) -> Section | None:
    """How an affinity:K:auto run chose its tasks: when, from what, at what cost, the heat map."""
    found = run.tasks()
    if found is None:
        return None
    t, arrays = found
    share = t["warmup_seconds"] / train_seconds if train_seconds else float("nan")
    text = (
        f"The {t['k']} intervals were chosen at step {t['step']} by the exact DP with the "
        f"task-affinity cost (Go et al. 2023, Sec. 4), from the gradient cosines of "
        f"{t['bins']} timestep bins on a fixed probe of {t['probe']} training samples, "
        f"measured on the raw weights at steps {', '.join(map(str, t['snapshots']))} and "
        f"averaged. Intervals: {html.escape(str(t['intervals']))}. The warm-up (vanilla "
        f"training up to step {t['step']}, the measurement included) took "
        f"{t['warmup_seconds']:.1f} s of the run's {train_seconds:.1f} s of training "
        f"({100 * share:.1f}%); the measurement itself "
        f"{t['measure_seconds']:.1f} s."
    )
    edges = arrays["edges"]
    centre = ((edges[:-1] + edges[1:] - 1) // 2).astype(int)
    fig = plot_affinity(arrays["affinity"], edges, log_snr[centre])
    return "Tasks chosen from the measured affinity", f"<p>{text}</p>{png(fig)}"


def sampling_section(rows: list[StepRow], steps: int) -> Section | None:
    """The timestep density the run trained on, in each third of its steps (from the histograms
    of drawn timesteps in metrics.jsonl)."""
    hists = [(r.step, np.asarray(r.t_hist, float)) for r in rows if r.t_hist is not None]
    if not hists:
        return None
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    bins = len(hists[0][1])
    for third in range(3):
        lo, hi = third * steps / 3, (third + 1) * steps / 3
        counts = sum((h for s, h in hists if lo < s <= hi), np.zeros(bins))
        if counts.sum():
            ax.step(
                np.arange(bins) + 0.5,
                counts / counts.sum() * bins,
                where="mid",
                label=f"steps {int(lo)}-{int(hi)}",
            )
    ax.set(xlabel=f"timestep t (in {bins} equal bins)", ylabel="density / uniform")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    return "Timestep sampling", png(fig)


def write_report(run: RunDir) -> Path:
    """Write `report.html` of the run and return its path."""
    cfg, info = run.cfg, run.info
    rows = run.metrics()
    sections: list[Section] = []
    if run.samples_png.is_file():
        sections.append(("Samples (EMA)", img_file(run.samples_png)))
    train_rows = [r for r in rows if isinstance(r, StepRow)]
    if train_rows:
        fig = plot_task_curves(train_rows, "task_losses", "task loss", log=True)
        sections.append(("Per-task loss", png(fig)))
        fig = plot_task_curves(train_rows, "task_weights", "weight on task loss", log=False)
        sections.append(("Method weights", png(fig)))
    sampling = sampling_section(train_rows, cfg.steps)
    if sampling:
        sections.append(sampling)
    evals = [(r.step, r.eval) for r in rows if isinstance(r, EvalRow)]
    if evals:
        sections.append(("Evaluation over training", png(plot_eval_curves(evals))))
    log_snr = build.schedule(cfg).snr_numpy(log=True)
    title = f"{info.clustering_cost} clustering" + (" (warm-up: provisional)" * info.warming_up)
    fig = plot_partition(info.partition, log_snr, title=title)
    sections.append(("Tasks: the partition over log-SNR", png(fig)))
    timed = [r.time for r in rows if r.time is not None]
    tasks = tasks_section(run, timed[-1] if timed else 0.0, log_snr)
    if tasks:
        sections.append(tasks)
    result = run.evaluation()
    if result:
        sections.append(evaluation_section(result))
    affinity = affinity_section(run.affinity_dir)
    if affinity:
        sections.append(affinity)
    config = [[html.escape(k), html.escape(str(v))] for k, v in cfg.to_dict().items()]
    sections.append(("Configuration", table(["key", "value"], config)))
    last = train_rows[-1] if train_rows else None
    summary = (
        f"{html.escape(cfg.method)} on {html.escape(cfg.dataset)}, {info.partition.k} "
        f"tasks ({html.escape(cfg.clusters)}, {cfg.timestep_sampling} timestep sampling, "
        f"weighting {html.escape(cfg.weighting)}); step {last.step if last else 0} of "
        f"{cfg.steps}, final loss {last.loss if last else float('nan'):.4f}"
    )
    with replacing(run.report_html) as tmp:
        tmp.write_text(page(f"antdiff run {run.path.name}", summary, sections))
    return run.report_html

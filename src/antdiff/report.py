"""One self-contained HTML page per run: samples, per-task losses, method weights, partition."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from antdiff.config import load_run_config
from antdiff.schedule import NoiseSchedule
from antdiff.tasks import IntervalPartition


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _curves(rows: list[dict], key: str, ylabel: str, log: bool) -> str:
    steps = [r["step"] for r in rows if key in r]
    values = np.array([[np.nan if v is None else v for v in r[key]] for r in rows if key in r])
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    for k in range(values.shape[1]):
        ax.plot(steps, values[:, k], label=f"task {k}", lw=1.2)
    ax.set(xlabel="step", ylabel=ylabel)
    if log and np.nanmin(values) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=min(5, values.shape[1]))
    return _png(fig)


def _eval_curves(rows: list[dict]) -> str | None:
    """FD (or SWD for points) and held-out loss per interval over training (--eval-every)."""
    evals = [(r["step"], r["eval"]) for r in rows if "eval" in r]
    if not evals:
        return None
    steps = [s for s, _ in evals]
    key = "fd" if "fd" in evals[0][1] else "swd"
    fig = Figure(figsize=(9, 3))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, [e.get(key) for _, e in evals], marker="o")
    ax1.set(xlabel="step", ylabel=key)
    if "heldout" in evals[0][1]:
        per = np.array([[iv["mean"] for iv in e["heldout"]["intervals"]] for _, e in evals])
        for k in range(per.shape[1]):
            ax2.plot(steps, per[:, k], marker=".", label=f"task {k}")
        ax2.set(xlabel="step", ylabel="held-out loss", yscale="log")
        ax2.legend(fontsize=7)
    return _png(fig)


def _partition_png(part: IntervalPartition, schedule: NoiseSchedule) -> str:
    from antdiff.plots import plot_partition

    buf = io.BytesIO()
    plot_partition(part, schedule, buf)
    return base64.b64encode(buf.getvalue()).decode()


def analysis_sections(run_dir: str | Path) -> list[tuple[str, str]]:
    """Task affinity (O1) written by `antdiff affinity` into RUN/affinity/, if present."""
    from antdiff.analysis.report import affinity_section

    section = affinity_section(Path(run_dir) / "affinity")
    return [section] if section else []


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    part = IntervalPartition.from_dict(meta["partition"])
    schedule = NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)
    rows = read_metrics(run_dir)
    sections = []
    samples = run_dir / "samples.png"
    if samples.is_file():
        data = base64.b64encode(samples.read_bytes()).decode()
        sections.append(("Samples (EMA)", f'<img src="data:image/png;base64,{data}">'))
    if rows:
        img = _curves(rows, "task_losses", "task loss", log=True)
        sections.append(("Per-task loss", f'<img src="data:image/png;base64,{img}">'))
        img = _curves(rows, "weights", "weight on task loss", log=False)
        sections.append(("Method weights", f'<img src="data:image/png;base64,{img}">'))
    img = _eval_curves(rows)
    if img:
        sections.append(("Evaluation over training", f'<img src="data:image/png;base64,{img}">'))
    img = _partition_png(part, schedule)
    sections.append(
        ("Tasks: the partition over log-SNR", f'<img src="data:image/png;base64,{img}">')
    )
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        text = html.escape(json.dumps(json.loads(metrics.read_text()), indent=1))
        sections.append(("Evaluation", f"<pre>{text}</pre>"))
    sections.extend(analysis_sections(run_dir))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in cfg.to_dict().items())  # fmt: skip
    sections.append(("Configuration", f"<table>{table}</table>"))
    last = rows[-1] if rows else {}
    title = f"antdiff run {html.escape(run_dir.name)}"
    summary = (f"{html.escape(cfg.method)} on {html.escape(cfg.dataset)}, {part.k} tasks "
               f"({html.escape(cfg.clusters)}, {cfg.sampling} sampling, weighting "
               f"{html.escape(cfg.weighting)}); step {last.get('step', 0)} of {cfg.steps}, "
               f"final loss {last.get('loss', float('nan')):.4f}")  # fmt: skip
    body = "".join(f"<h2>{h}</h2>{content}" for h, content in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font-family:sans-serif;max-width:900px;margin:auto}img{max-width:100%}"
            "td{padding:0 8px;font-family:monospace}</style></head>"
            f"<body><h1>{title}</h1><p>{summary}</p>{body}</body></html>")  # fmt: skip
    out = run_dir / "report.html"
    out.write_text(page)
    return out

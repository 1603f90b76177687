"""HTML sections for the analyses: task affinity (O1) and negative transfer (O2).

`affinity_section(dir)` and `transfer_section(dir)` return (heading, html) or None when the
folder holds no result; the run report (antdiff.report.write_report) includes the affinity
section of `RUN/affinity/`, and `write_experiment_report(dir)` writes a self-contained page for
an experiment folder (transfer.json and/or affinity.json).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

Section = tuple[str, str]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}">'


def affinity_section(folder: str | Path) -> Section | None:
    """Heat maps and rank correlations written by `antdiff affinity` into `folder`."""
    folder = Path(folder)
    info = folder / "affinity.json"
    if not info.is_file():
        return None
    s = json.loads(info.read_text())
    sketch = "exact gradients" if s["sketch_dim"] == 0 else f"{s['projection']} sketch, dim "
    sketch += "" if s["sketch_dim"] == 0 else str(s["sketch_dim"])
    text = (
        f"Cosine similarity of per-bin loss gradients (Go et al. 2023, Sec. 2.1) over "
        f"{s['bins']} timestep bins, averaged over checkpoints at steps "
        f"{', '.join(map(str, s['steps']))} ({s['weights']} weights, probe of {s['probe']} "
        f"with fixed noise, {sketch}). Spearman rank correlation with the timestep gap: "
        f"<b>{s['spearman_gap_t']:+.3f}</b>; with the log-SNR gap: "
        f"<b>{s['spearman_gap_logsnr']:+.3f}</b> (O1 predicts negative)."
    )
    png = folder / "affinity.png"
    return "Task affinity (O1)", f"<p>{text}</p>" + (_img(png) if png.is_file() else "")


def transfer_section(folder: str | Path) -> Section | None:
    """NTG and held-out gap per interval from `transfer.json` in `folder`."""
    from antdiff.analysis.transfer import gap_percent, interval_labels

    folder = Path(folder)
    path = folder / "transfer.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    m = r["metric"].upper()
    pct = gap_percent(r)
    rows = "".join(
        f"<tr><td>{label}</td><td>{_cell(r['ntg'], j, 3)}</td>"
        f"<td>{_cell(r['heldout_gap'], j, 5)}</td><td>{_cell(pct, j, 1)}</td>"
        f"<td>{r['specialist_steps'][j]}</td></tr>"
        for j, label in enumerate(interval_labels(r["intervals"]))
    )
    st = r["settings"]
    text = (
        f"NTG_j = {m}(specialist inside interval j, generalist elsewhere) - {m}(generalist); "
        f"negative = negative transfer. Mean +- std over seeds {r['seeds']}; generalist "
        f"{html.escape(st['method'])}, {r['generalist_steps']} steps; budget {st['budget']}; "
        f"{st['num_samples']} samples, {st['sampler']} {st['sample_steps']} steps."
    )
    table = (
        f"<table><tr><th>interval</th><th>NTG ({m})</th><th>held-out gap</th>"
        f"<th>gap %</th><th>specialist steps</th></tr>{rows}</table>"
    )
    png = folder / "transfer.png"
    return "Negative transfer (O2)", f"<p>{text}</p>{table}" + (_img(png) if png.is_file() else "")


def _cell(stats: dict, j: int, digits: int) -> str:
    std = stats["std"][j]
    spread = "" if std is None else f" &plusmn; {std:.{digits}f}"
    return f"{stats['mean'][j]:+.{digits}f}{spread}"


def page(title: str, summary: str, sections: list[Section]) -> str:
    body = "".join(f"<h2>{h}</h2>{content}" for h, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
        "td,th{padding:0 8px;font-family:monospace}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{summary}</p>{body}</body></html>"
    )


def write_experiment_report(folder: str | Path) -> Path:
    """`folder/report.html` with whichever analyses the folder holds."""
    folder = Path(folder)
    sections = [s for s in (transfer_section(folder), affinity_section(folder)) if s]
    out = folder / "report.html"
    summary = "Observations O1 and O2 of Go et al. (NeurIPS 2023) measured by antdiff."
    out.write_text(page(f"antdiff analysis {folder.name}", summary, sections))
    return out

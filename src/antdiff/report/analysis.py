"""Pages and tables of the analyses, from the JSON they write: task affinity (O1, affinity.json)
and negative transfer (O2, transfer.json) of Go et al. (NeurIPS 2023).

`affinity_section(dir)` and `transfer_section(dir)` return (heading, html) or None when the
folder holds no result; a run's report includes the affinity section of `RUN/affinity/`, and
`write_experiment_report(dir)` writes a page for an experiment folder.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from antdiff.errors import replacing
from antdiff.report.html import Section, img_file, page, table


def affinity_section(folder: str | Path) -> Section | None:
    """Heat maps and rank correlations written by `antdiff affinity` into `folder`."""
    folder = Path(folder)
    info = folder / "affinity.json"
    if not info.is_file():
        return None
    s = json.loads(info.read_text())
    exact = s["sketch_dim"] == 0
    sketch = "exact gradients" if exact else f"{s['projection']} sketch, dim {s['sketch_dim']}"
    text = (
        f"Cosine similarity of per-bin loss gradients (Go et al. 2023, Sec. 2.1) over "
        f"{s['bins']} timestep bins, averaged over checkpoints at steps "
        f"{', '.join(map(str, s['steps']))} ({s['weights']} weights, probe of {s['probe']} "
        f"with fixed noise, {sketch}). Spearman rank correlation with the timestep gap: "
        f"<b>{s['spearman_gap_t']:+.3f}</b>; with the log-SNR gap: "
        f"<b>{s['spearman_gap_logsnr']:+.3f}</b> (O1 predicts negative)."
    )
    png = folder / "affinity.png"
    return "Task affinity (O1)", f"<p>{text}</p>" + (img_file(png) if png.is_file() else "")


def interval_labels(intervals: list[list[int]]) -> list[str]:
    return [f"[{l},{r}]" for l, r in intervals]


def transfer_rows(r: dict[str, Any], pm: str) -> list[list[str]]:
    """Per interval: NTG, held-out gap, gap in %, specialist steps (mean `pm` std over seeds)."""
    return [
        [
            label,
            _pm(r["ntg"], j, 3, pm),
            _pm(r["heldout_gap"], j, 5, pm),
            _pm(r["heldout_gap_pct"], j, 1, pm),
            str(r["specialist_steps"][j]),
        ]
        for j, label in enumerate(interval_labels(r["intervals"]))
    ]


def transfer_section(folder: str | Path) -> Section | None:
    """NTG and held-out gap per interval from `transfer.json` in `folder`."""
    folder = Path(folder)
    path = folder / "transfer.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    m = r["metric"].upper()
    st = r["settings"]
    text = (
        f"NTG_j = {m}(specialist inside interval j, generalist elsewhere) - {m}(generalist); "
        f"negative = negative transfer. Mean +- std over seeds {r['seeds']}; generalist "
        f"{html.escape(st['method'])}, {r['generalist_steps']} steps; budget {st['budget']}; "
        f"{st['num_samples']} samples, {st['sampler']} {st['sample_steps']} steps."
    )
    header = ["interval", f"NTG ({m})", "held-out gap", "gap %", "specialist steps"]
    body = table(header, transfer_rows(r, " &plusmn; "))
    png = folder / "transfer.png"
    figure = img_file(png) if png.is_file() else ""
    return "Negative transfer (O2)", f"<p>{text}</p>{body}{figure}"


def summary_table(result: dict[str, Any]) -> str:
    """Plain-text table of NTG and held-out gap per interval (mean +- std over seeds)."""
    m = result["metric"].upper()
    widths = (12, 18, 20, 14)
    head = ["interval", f"NTG ({m})", "held-out gap", "gap %"]
    lines = ["  ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for row in transfer_rows(result, " +- "):
        lines.append("  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=False)))
    return "\n".join(lines)


def _pm(stats: dict[str, Any], j: int, digits: int, pm: str) -> str:
    std = stats["std"][j]
    spread = "" if std is None else f"{pm}{std:.{digits}f}"
    return f"{stats['mean'][j]:+.{digits}f}{spread}"


def write_experiment_report(folder: str | Path) -> Path:
    """`folder/report.html` with whichever analyses the folder holds."""
    folder = Path(folder)
    sections = [s for s in (transfer_section(folder), affinity_section(folder)) if s]
    out = folder / "report.html"
    summary = "Observations O1 and O2 of Go et al. (NeurIPS 2023) measured by antdiff."
    with replacing(out) as tmp:
        tmp.write_text(page(f"antdiff analysis {folder.name}", summary, sections))
    return out

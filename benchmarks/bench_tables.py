"""A benchmark summary (bench_stats.summarize) as markdown tables and convergence plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from antdiff.metrics.declare import METRICS
from bench_stats import EXTRAS


def fmt(m: float, s: float, digits: int = 2) -> str:
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f} +/- {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


def fmt_g(m: float | None, s: float | None) -> str:
    """3 significant digits (for metrics of very different scales: MMD^2, shares, P/R)."""
    if m is None or not math.isfinite(m):
        return "-"
    return f"{m:.3g} +/- {s:.2g}" if s is not None and math.isfinite(s) else f"{m:.3g}"


def milli(d: dict[str, Any], key: str) -> str:
    return fmt(1e3 * d.get(f"{key}_mean", math.nan), 1e3 * d.get(f"{key}_std", math.nan))


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (for docs/results.md and the terminal)."""
    metric, ms = summary["metric"], summary["methods"]
    m_up, dig, extras = metric.upper(), METRICS[metric].digits, EXTRAS[metric]
    steps = next(iter(ms.values()))["steps"]
    lines = [
        f"Equal steps ({steps}); mean +/- std over n seeds; differences are paired per seed "
        "(method minus vanilla, same training seed, same evaluation seed; flow-* rows minus "
        "flow-vanilla).",
        "",
        f"| method | n | held-out loss x1e3 | d held-out vs vanilla | {m_up} final | "
        f"d {m_up} vs vanilla | " + " | ".join(extras) + f" | steps to vanilla's final {m_up} |",
        "|---|---|---|---|---|---|" + "---|" * len(extras) + "---|",
    ]
    for name, e in ms.items():
        hd, fd = e.get("heldout_diff_vs_vanilla"), e.get(f"{metric}_diff_vs_vanilla")
        lines.append(
            f"| {name} | {len(e['seeds'])} | {milli(e, 'heldout')} | "
            f"{fmt(1e3 * hd['mean'], 1e3 * hd['std']) if hd else '-'} | "
            f"{fmt(e[f'{metric}_mean'], e[f'{metric}_std'], dig)} | "
            f"{fmt(fd['mean'], fd['std'], dig) if fd else '-'} | "
            + "".join(f"{fmt_g(e.get(f'{x}_mean'), e.get(f'{x}_std'))} | " for x in extras)
            + f"{e.get('steps_to_vanilla_final') or 'not reached'} |"
        )
    rel = {
        n: e["heldout_intervals_rel_vs_vanilla"]
        for n, e in ms.items()
        if "heldout_intervals_rel_vs_vanilla" in e
    }
    if rel:
        ivs = [f"t {l}-{r}" for l, r in summary["heldout_intervals"]]
        lines += [
            "",
            "Held-out loss per timestep interval, relative to vanilla (paired, mean "
            "over seeds; negative = lower loss than vanilla):",
            "",
            "| method | " + " | ".join(ivs) + " |",
            "|---|" + "---|" * len(ivs),
        ]
        lines += [
            f"| {n} | " + " | ".join(f"{100 * v:+.1f}%" for v in r) + " |" for n, r in rel.items()
        ]
    source = next((e["cost_source"] for n, e in ms.items() if n != "vanilla"), "-")
    lines += [
        "",
        f"Equal total wall-clock (vanilla's {steps} steps; cost per step from {source}; "
        "fixed costs (a pre-run, an online measurement) in vanilla steps; values read on "
        f"the convergence curve, {summary.get('curve_num', '')} samples):",
        "",
        f"| method | cost x vanilla | fixed cost | steps in vanilla's time | {m_up} | "
        f"d {m_up} vs vanilla | held-out x1e3 |",
        "|---" * 7 + "|",
    ]
    for name, e in ms.items():
        if (q := e.get("equal_time")) and f"{metric}_mean" not in q:
            lines.append(
                f"| {name} | {e['cost_vs_vanilla']:.2f} | {e['overhead_steps']:g} | 0 "
                "| fixed cost exceeds the budget | - | - |"
            )
        elif q:
            d = fmt(q["diff_mean"], q["diff_std"], dig) if "diff_mean" in q else "-"
            lines.append(
                f"| {name} | {e['cost_vs_vanilla']:.2f} | {e['overhead_steps']:g} | "
                f"{q['step']} | {fmt(q[f'{metric}_mean'], q[f'{metric}_std'], dig)} | "
                f"{d} | {milli(q, 'heldout')} |"
            )
    sweeps = {n: e["guidance"] for n, e in ms.items() if "guidance" in e}
    if sweeps:
        gs = list(next(iter(sweeps.values())))
        head = ["| method | " + " | ".join(f"g={g}" for g in gs) + " |", "|---|" + "---|" * len(gs)]

        def row(name: str, cells: dict[str, Any], m: str, s: str) -> str:
            return f"| {name} | " + " | ".join(fmt(cells[g][m], cells[g][s]) for g in gs) + " |"

        lines += ["", f"Guidance sweep ({m_up}):", "", *head]
        lines += [row(n, sw, f"{metric}_mean", f"{metric}_std") for n, sw in sweeps.items()]
        diffs = {n: sw for n, sw in sweeps.items() if "diff_mean" in sw[gs[0]]}
        if diffs:
            lines += ["", f"Paired d {m_up} vs vanilla at each guidance (same seeds):", "", *head]
            lines += [row(n, sw, "diff_mean", "diff_std") for n, sw in diffs.items()]
    lines += ["", "Commands (one per row; each reruns or resumes that row):", "", "```"]
    lines += [e["command"] for e in ms.values()] + ["```", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], out_dir: Path, prefix: str, only: list[str] | None) -> list:
    """Convergence curves (metric and held-out loss vs step), mean +/- std over seeds, as PNGs."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    metric, paths = summary["metric"], []
    for key, label in ((metric, metric.upper()), ("heldout", "held-out loss (common intervals)")):
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        for name, e in summary["methods"].items():
            rows = [r for r in e["curve"].get(key, []) if r[0] > 0]
            if not rows or (only and name not in only):
                continue
            x, m, s = (list(c) for c in zip(*rows, strict=True))
            s = [v if math.isfinite(v) else 0.0 for v in s]
            ax.plot(x, m, label=f"{name} (n={len(e['seeds'])})", lw=2 if name == "vanilla" else 1)
            lo, hi = (
                [a - b for a, b in zip(m, s, strict=True)],
                [a + b for a, b in zip(m, s, strict=True)],
            )
            ax.fill_between(x, lo, hi, alpha=0.12)
        if key == metric and summary.get("vanilla_final_curve") is not None:
            ax.axhline(summary["vanilla_final_curve"], color="k", ls=":", lw=0.8)
        note = f"{metric.upper()} on {summary.get('curve_num')} samples" if key == metric else ""
        ax.set(yscale="log", xlabel="training step", ylabel=label)
        ax.set_title(f"{summary['setting']}: mean +/- std over seeds {note}", fontsize=10)
        ax.legend(fontsize=7)
        paths.append(out_dir / f"{prefix}-{summary['setting']}-{key}.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    return paths

"""Paired summaries of benchmark runs: mean and spread over seeds, differences to vanilla on the
same seeds, convergence curves, the steps each method needs to reach vanilla's final metric, and
each method's value at vanilla's training time (equal wall-clock).

A run result is the JSON `benchmarks/quality.py` writes: `final` (one evaluation per guidance
scale), `curve` (evaluations during training with their `train_seconds`), `steps`, `seed`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from antdiff.metrics.declare import METRICS, PRIMARY, summary_metrics

#: beside each primary metric, the metrics its summary shows (declared in antdiff.metrics)
EXTRAS = {p: summary_metrics(p) for p in PRIMARY.values()}
EXTRAS["fid"] = ("fd", *EXTRAS["fd"])  # the standard FID ranks where measured (28x28 settings)
#: what a compacted evaluation keeps: every declared number but the held-out loss (kept apart)
KEEP = (*(m for m in METRICS if m != "heldout"), "num_samples")


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The numbers a result keeps of one evaluation (antdiff.evaluate.Evaluator): no per-bin
    detail, the held-out loss per interval with the intervals' bounds."""
    out = {k: res[k] for k in KEEP if k in res}
    if "heldout" in res:
        ivs = res["heldout"]["intervals"]
        out.update(
            heldout=res["heldout"]["mean"],
            heldout_intervals=[iv["mean"] for iv in ivs],
            heldout_bounds=[iv["interval"] for iv in ivs],
        )
    return out


def mean_std(values: list[float | None]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def curve_mean(runs: list[dict[str, Any]], key: str) -> list[tuple[int, float, float]]:
    """(step, mean, std) over seeds at the evaluation steps all runs share."""
    steps = sorted(set.intersection(*(set(c["step"] for c in r["curve"]) for r in runs)))
    return [
        (s, *mean_std([next(c[key] for c in r["curve"] if c["step"] == s) for r in runs]))
        for s in steps
    ]


def steps_to_reach(curve: list[tuple[int, float, float]], target: float) -> int | None:
    """First evaluation step whose mean is at or below `target` (None: never)."""
    return next((step for step, mean, _ in curve if step > 0 and mean <= target), None)


def at_step(run: dict[str, Any], step: int, key: str) -> float:
    """The run's curve value at `step`, linear between evaluation points."""
    pts = [(c["step"], c[key]) for c in run["curve"]]
    lo = max(p for p in pts if p[0] <= step)
    hi = min((p for p in pts if p[0] >= step), default=lo)
    if hi[0] == lo[0]:
        return lo[1]
    w = (step - lo[0]) / (hi[0] - lo[0])
    return (1 - w) * lo[1] + w * hi[1]


def final_eval(run: dict[str, Any], guidance: str) -> dict[str, Any]:
    """The final evaluation at `guidance` (the only one for unguided settings)."""
    finals = run["final"]
    return finals[guidance] if guidance in finals else next(iter(finals.values()))


def heldout_bounds(result: dict[str, Any]) -> list[list[int]]:
    """The common intervals a result's held-out loss was read on (older results: equal widths
    over the run's T, what the benchmark's common partition `timestep:5` gives)."""
    final = next(iter(result["final"].values()))
    if "heldout_bounds" in final:
        return final["heldout_bounds"]
    T, k = result["config"]["timesteps"], len(final["heldout_intervals"])
    return [[b * T // k, (b + 1) * T // k - 1] for b in range(k)]


def step_seconds(run: dict[str, Any]) -> float:
    """Seconds per training step, without the run's fixed overhead."""
    return (run["train_seconds"] - run.get("overhead_seconds", 0)) / run["steps"]


def paired(runs: list[dict], base: dict[int, dict], value: Callable[[dict], float]) -> dict:
    """mean/std/n over the shared seeds of value(run) - value(vanilla run of that seed)."""
    diffs = [value(r) - value(base[r["seed"]]) for r in runs if r["seed"] in base]
    m, s = mean_std(diffs)
    return {"mean": m, "std": s, "n": len(diffs)}


def relative(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Held-out loss per interval of evaluation `a` relative to `b`: a / b - 1."""
    pairs = zip(a["heldout_intervals"], b["heldout_intervals"], strict=True)
    return [x / y - 1 for x, y in pairs]


def reference(name: str) -> str:
    """The vanilla a method is paired with: the plain run of its own objective (flow rows have a
    velocity held-out loss, not comparable with epsilon-prediction vanilla's)."""
    return "flow-vanilla" if name.startswith("flow-") else "vanilla"


def summarize(
    results: list[dict[str, Any]],
    *,
    guidance: str = "1.0",
    costs: dict[str, float] | None = None,
    overheads: dict[str, float] | None = None,
    command: Callable[[str, list[int]], str] = lambda method, seeds: "",
) -> dict[str, Any]:
    """Per method: mean/std over seeds, paired differences to vanilla, curves, budgets.

    `costs` (ms per step, measured side by side) gives each method's cost relative to vanilla;
    without it the runs' own clocks do. Fixed costs enter the equal-wall-clock budget in units
    of vanilla steps: `overheads` per method (a pre-run, say) plus each run's own
    `overhead_seconds` (an online measurement, part of its clock)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        by_method.setdefault(r["method"], []).append(r)
    first = final_eval(results[0], guidance)
    metric = next(m for m in ("fid", PRIMARY["image"], PRIMARY["points"]) if m in first)
    bases = {
        ref: {r["seed"]: r for r in by_method.get(ref, [])} for ref in ("vanilla", "flow-vanilla")
    }
    clock = bases["vanilla"]  # the wall-clock budget is always vanilla's
    costs, overheads = costs or {}, overheads or {}
    methods = {}
    for name, runs in by_method.items():
        own_base = bases[reference(name)]
        base = own_base if name != reference(name) else {}  # what this row is paired with
        target = curve_mean(list(own_base.values()), metric)[-1][1] if own_base else None
        finals = [final_eval(r, guidance) for r in runs]
        per_step = statistics.fmean(step_seconds(r) for r in runs)
        e: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "steps": runs[0]["steps"],
            "wall_seconds": round(statistics.fmean(r["wall_seconds"] for r in runs), 1),
            "train_seconds": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
            "ms_per_step": round(1000 * per_step, 2),
            "command": command(name, [r["seed"] for r in runs]),
        }
        for key in (metric, *EXTRAS[metric], "heldout", "loglik"):
            if any(key in f for f in finals):
                e[f"{key}_mean"], e[f"{key}_std"] = mean_std([f.get(key) for f in finals])
        if "heldout_intervals" in finals[0]:
            cols = zip(*(f["heldout_intervals"] for f in finals), strict=True)
            e["heldout_intervals_mean"] = [statistics.fmean(c) for c in cols]
        if len(runs[0]["final"]) > 1:  # a guidance sweep, paired with vanilla per scale
            e["guidance"] = {}
            for g in runs[0]["final"]:
                m, s = mean_std([r["final"][g][metric] for r in runs])
                e["guidance"][g] = {f"{metric}_mean": m, f"{metric}_std": s}
                if base:
                    d = paired(runs, base, lambda r, g=g: r["final"][g][metric])
                    e["guidance"][g].update(diff_mean=d["mean"], diff_std=d["std"])
        if base:
            e["paired_with"] = reference(name)
            for key in (metric, "heldout"):
                if key in finals[0]:
                    e[f"{key}_diff_vs_vanilla"] = paired(
                        runs, base, lambda r, key=key: final_eval(r, guidance)[key]
                    )
            if "heldout_intervals" in finals[0]:
                rel = [
                    relative(final_eval(r, guidance), final_eval(base[r["seed"]], guidance))
                    for r in runs
                    if r["seed"] in base
                ]
                cols = zip(*rel, strict=True)
                e["heldout_intervals_rel_vs_vanilla"] = [statistics.fmean(c) for c in cols]
        e["curve"] = {
            k: curve_mean(runs, k) for k in (metric, "heldout") if k in runs[0]["curve"][0]
        }
        if target is not None:
            e["steps_to_vanilla_final"] = steps_to_reach(e["curve"][metric], target)
        if clock:
            base_step = statistics.fmean(step_seconds(r) for r in clock.values())
            probe = costs.get(name, 0) / costs["vanilla"] if "vanilla" in costs else 0
            e["cost_vs_vanilla"] = round(probe or per_step / base_step, 3)
            e["cost_source"] = "interleaved probe" if probe else "the runs' own clocks"
            own = statistics.fmean(r.get("overhead_seconds", 0) / base_step for r in runs)
            e["overhead_steps"] = round(overheads.get(name, 0) + own, 1)
            budget = e["steps"] / e["cost_vs_vanilla"] - e["overhead_steps"]
            reach = max(0, min(e["steps"], int(budget)))
            e["equal_time"] = {"steps_affordable": reach, "step": reach}
            if reach > 0:  # else its fixed cost alone exceeds vanilla's training time
                m, s = mean_std([at_step(r, reach, metric) for r in runs])
                e["equal_time"].update({f"{metric}_mean": m, f"{metric}_std": s})
                if base:

                    def budgeted(r: dict, n: int = reach, m: str = name) -> float:
                        return at_step(r, n if r["method"] == m else r["steps"], metric)

                    d = paired(runs, base, budgeted)  # vanilla: all of its steps
                    e["equal_time"].update(diff_mean=d["mean"], diff_std=d["std"])
                if "heldout" in runs[0]["curve"][0]:
                    hm, hs = mean_std([at_step(r, reach, "heldout") for r in runs])
                    e["equal_time"].update(heldout_mean=hm, heldout_std=hs)
        methods[name] = e
    target = methods.get("vanilla", {}).get("curve", {}).get(metric, [(0, None)])[-1][1]
    return {
        "setting": results[0]["setting"],
        "metric": metric,
        "vanilla_final_curve": target,
        "methods": methods,
    }

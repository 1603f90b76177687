"""Why is ANT worse than vanilla with classifier-free guidance? Per-interval diagnosis and guidance
limited to an interval of noise levels (Kynkaanniemi et al., NeurIPS 2024).

It reads the final (EMA) models of class-conditional runs of benchmarks/quality.py, per model:
(a) the held-out loss per interval of the common partition `timestep:5`, conditional (true label)
    and unconditional (the null label the model was trained with for dropped labels), and the
    mean squared difference of the two predictions (the gap that guidance amplifies);
(b) classifier FD (the quality benchmark's sampler, steps and evaluation seed) at each guidance
    scale with guidance on the whole range and on the limited intervals given.
Each part of each model is written as soon as it is done and reused on a rerun (resumable).
Paired by design: the same held-out triples and sampling seed for every model; ANT minus
vanilla per seed.

    python benchmarks/quality.py --dataset digits-cond --methods vanilla,ant-uw-auto \
        --seeds 0,1,2 --steps 1000 --curve-every 125 --curve-num 300 --workers 1 --threads 1 \
        --results RESULTS --out RUNS
    python benchmarks/guidance.py --runs RUNS/digits-cond --quality RESULTS/digits-cond \
        --scales 1,1.5,2,3,4 --limited-scales 2,3,4 --intervals 0,1 0.2,0.6 0,0.6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from antdiff import build
from antdiff.diffusion import FlowPath, q_sample
from antdiff.diffusion.guidance import FULL, parse_guidance_interval
from antdiff.evaluate import Evaluator
from antdiff.metricrows import StepRow
from antdiff.metrics import evaluate_heldout
from antdiff.rundir import RunDir
from antdiff.tasks import clustering_from_spec
from bench_stats import mean_std

COMMON_PARTITION = "timestep:5"
KEEP = ("fd", "precision", "recall", "density", "coverage", "confidence", "class_kl", "accuracy")


def grid(args: argparse.Namespace, intervals: list) -> list[tuple[float, tuple[float, float]]]:
    """The (scale, interval) pairs evaluated: g = 1 once; the limited intervals only at
    `--limited-scales` (default: every scale)."""
    limited = args.scales if args.limited_scales is None else args.limited_scales
    return [
        (g, iv)
        for g in args.scales
        for iv in ([FULL] if g == 1.0 else intervals if g in limited else [FULL])
    ]


def key(g: float, interval: tuple[float, float]) -> str:
    """The result key of one guided evaluation: "g@lo,hi" (g = 1 ignores the interval)."""
    return f"{g:g}" if g == 1.0 else f"{g:g}@{interval[0]:g},{interval[1]:g}"


def evaluator(run: RunDir, args: argparse.Namespace, g: float, interval, num: int) -> Evaluator:
    schedule = build.schedule(run.cfg)
    return Evaluator(
        run.cfg,
        run.info,
        schedule,
        num=num,
        sampler=run.cfg.sampler,
        steps=args.sample_steps,
        guidance=g,
        guidance_interval=interval,
        seed=args.eval_seed,
        partition=clustering_from_spec(COMMON_PARTITION, schedule).partition,
        per_interval=args.heldout_per_interval,
    )


def gap_fn(model: torch.nn.Module, ev: Evaluator, null: int, image: bool = False):
    """(x0, t, noise, y) -> mean over dims of (f(x_t, t, y) - f(x_t, t, null))^2, [B]; with
    `image`, the same for the two predictions of x_0 that f implies (what guidance moves)."""
    path = ev.schedule.loss_path(torch.device("cpu"))
    prediction = ev.cfg.prediction

    def fn(x0, t, noise, y):
        if isinstance(path, FlowPath):  # x_0 = x_t - sigma v
            xt, tin = path.noisy(x0, t, noise), path.model_time(t)
            factor = path.sigma(t).float() ** 2
        else:  # x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a), or sqrt(a) x_t - sqrt(1 - a) v
            xt, tin = q_sample(x0, t, noise, path), t
            a = path[t].float()
            factor = {"epsilon": (1 - a) / a, "v": 1 - a}.get(prediction, torch.ones_like(a))
        diff = model(xt, tin, y) - model(xt, tin, torch.full_like(y, null))
        gap = diff.pow(2).flatten(1).mean(1)
        return gap * factor if image else gap

    return fn


@torch.no_grad()
def heldout_part(run: RunDir, model, args: argparse.Namespace) -> dict[str, Any]:
    """(a): cond/uncond held-out loss and the cond-uncond gap per common interval, plus the
    run's own tasks and the method's final weights."""
    ev = evaluator(run, args, 1.0, FULL, 2)
    null = run.info.num_classes
    tr = ev.triples
    assert tr is not None and tr.y is not None
    loss = ev.loss_fn(model)
    rows = {
        "cond": evaluate_heldout(loss, tr),
        "uncond": evaluate_heldout(loss, dataclasses.replace(tr, y=torch.full_like(tr.y, null))),
        "gap": evaluate_heldout(gap_fn(model, ev, null), tr),
        "gap_x0": evaluate_heldout(gap_fn(model, ev, null, image=True), tr),
    }
    out: dict[str, Any] = {k: [iv["mean"] for iv in v["intervals"]] for k, v in rows.items()}
    out["sem"] = {k: [iv["sem"] for iv in v["intervals"]] for k, v in rows.items()}
    out["bounds"] = [iv["interval"] for iv in rows["cond"]["intervals"]]
    steps = [r for r in run.metrics() if isinstance(r, StepRow)]
    out["tasks"] = [list(iv) for iv in run.info.partition.intervals]
    out["task_weights"] = steps[-1].task_weights if steps else None
    out["label_dropout"] = run.cfg.label_dropout
    return out


@torch.no_grad()
def fd_part(run: RunDir, model, args, g: float, interval) -> dict[str, Any]:
    """(b): sample quality of `args.fd_num` samples at scale g, guided on `interval`."""
    ev = evaluator(run, args, g, interval, args.fd_num)
    t0 = time.perf_counter()
    x, labels, gen = ev.sample(model)
    q = ev.sample_quality(x, labels, gen)
    out = {k: q[k] for k in KEEP if k in q}
    return {**out, "seconds": round(time.perf_counter() - t0, 1)}


def reuse(res: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    """Take the whole-range FDs that quality.py measured on this model, if its settings match."""
    if not path.is_file():
        return
    q = json.loads(path.read_text())
    ev = q["eval"]
    if (ev["fd_num"], ev["sample_steps"], ev["seed"]) != (
        args.fd_num,
        args.sample_steps,
        args.eval_seed,
    ):
        return
    for g, row in q["final"].items():
        k = key(float(g), FULL)
        if k not in res["fd"]:
            res["fd"][k] = {**{m: row[m] for m in KEEP if m in row}, "from": "quality.py"}


def save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def paired(data: dict, methods: list[str], seeds: list[int], value) -> dict[str, Any]:
    """Per method mean/std over seeds of value(model result), and ANT minus vanilla per seed."""
    out: dict[str, Any] = {}
    base = methods[0]
    for m in methods:
        vals = [value(data[f"{m}/seed{s}"]) for s in seeds if f"{m}/seed{s}" in data]
        vals = [v for v in vals if v is not None]
        out[m] = {"mean_std": mean_std(vals), "values": vals}
        if m != base:
            diffs = [
                value(data[f"{m}/seed{s}"]) - value(data[f"{base}/seed{s}"])
                for s in seeds
                if f"{m}/seed{s}" in data and f"{base}/seed{s}" in data
                if value(data[f"{m}/seed{s}"]) is not None
                and value(data[f"{base}/seed{s}"]) is not None
            ]
            out[f"{m}-{base}"] = {"mean_std": mean_std(diffs), "values": diffs}
    return out


def fd_of(k: str):
    return lambda r: r.get("fd", {}).get(k, {}).get("fd")


def summarize(data: dict, args, methods: list[str], intervals) -> dict[str, Any]:
    summary: dict[str, Any] = {"heldout": {}, "fd": {}}
    held = {k: r for k, r in data.items() if "gap_x0" in r.get("heldout", {})}
    if held:
        for part in ("cond", "uncond", "gap", "gap_x0"):
            summary["heldout"][part] = [
                paired(held, methods, args.seeds, lambda r, i=i, p=part: r["heldout"][p][i])
                for i in range(5)
            ]
        summary["heldout"]["label_value"] = [  # uncond - cond loss: what the label is worth
            paired(held, methods, args.seeds, lambda r, i=i: _label_value(r, i)) for i in range(5)
        ]
    for g, iv in grid(args, intervals):
        summary["fd"][key(g, iv)] = paired(data, methods, args.seeds, fd_of(key(g, iv)))
    return summary


def _label_value(r: dict, i: int) -> float:
    h = r["heldout"]
    return h["uncond"][i] - h["cond"][i]


def show(summary: dict, methods: list[str]) -> None:
    def cell(p: dict) -> str:
        m, s = p["mean_std"]
        return f"{m:9.5f} +- {s:.5f}"

    pair = f"{methods[-1]}-{methods[0]}"
    print(f"\n(a) held-out per interval of {COMMON_PARTITION} (mean +- std over seeds)")
    for part, rows in summary["heldout"].items():
        print(f"  {part}")
        for i, r in enumerate(rows):
            print(f"    interval {i}: " + " | ".join(f"{k} {cell(v)}" for k, v in r.items()))
    print(f"\n(b) FD (mean +- std over seeds); paired {pair} per seed")
    for k, r in summary["fd"].items():
        f = lambda p: f"{p['mean_std'][0]:7.2f} +- {p['mean_std'][1]:5.2f}"  # noqa: E731
        per_seed = ", ".join(f"{v:+.2f}" for v in r.get(pair, {}).get("values", []))
        cells = " | ".join(f"{m} {f(r[m])}" for m in methods if m in r)
        print(f"  g={k:12s} {cells} | diff {f(r[pair]) if pair in r else '-'} [{per_seed}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="quality.py --out folder of the setting")
    p.add_argument("--methods", default="vanilla,ant-uw-auto", help="first: the baseline")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--scales", default="1,2,3,4")
    p.add_argument("--limited-scales", help="scales that get the limited intervals (default all)")
    p.add_argument("--intervals", nargs="+", default=["0,1", "0.2,0.6"], metavar="LO,HI")
    p.add_argument("--parts", default="heldout,fd", help="heldout and/or fd")
    p.add_argument("--fd-num", type=int, default=2000)
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--heldout-per-interval", type=int, default=400)
    p.add_argument("--results", default="benchmarks/results/guidance.json")
    p.add_argument(
        "--quality",
        help="quality.py --results folder of the setting: reuse its final whole-range FDs "
        "(same models, sampler, steps, seed and number of samples)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.scales = [float(g) for g in args.scales.split(",")]
    if args.limited_scales is not None:
        args.limited_scales = [float(g) for g in args.limited_scales.split(",")]
    intervals = [parse_guidance_interval(s) for s in args.intervals]
    out = Path(args.results)
    data = json.loads(out.read_text()) if out.is_file() else {}
    runs = data.setdefault("runs", {})
    for s in args.seeds:  # seed-major: pairs complete early
        for m in methods:
            rdir = Path(args.runs) / m / f"seed{s}"
            run = RunDir.open(rdir)
            model = build.trained_model(run)
            res = runs.setdefault(f"{m}/seed{s}", {"fd": {}})
            if args.quality:
                reuse(res, Path(args.quality) / m / f"seed{s}.json", args)
            if "heldout" in args.parts and "gap_x0" not in res.get("heldout", {}):
                res["heldout"] = heldout_part(run, model, args)
                save(out, data)
            for g, iv in grid(args, intervals) if "fd" in args.parts else []:
                if key(g, iv) not in res["fd"]:
                    res["fd"][key(g, iv)] = fd_part(run, model, args, g, iv)
                    save(out, data)
                    print(f"{m} seed {s} g={key(g, iv)}: {res['fd'][key(g, iv)]}", flush=True)
    folders = ("runs", "results", "quality")  # folders of this machine: not in the record
    settings = {k: v for k, v in vars(args).items() if k not in folders}
    data["settings"] = {**settings, "partition": COMMON_PARTITION, "intervals": intervals}
    given = sys.argv[1:] if argv is None else argv
    named = {f"--{f}": f.upper() for f in folders}
    data["command"] = "python benchmarks/guidance.py " + " ".join(
        named.get(given[i - 1], a) if i else a for i, a in enumerate(given)
    )
    data["summary"] = summarize(runs, args, methods, intervals)
    save(out, data)
    show(data["summary"], methods)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

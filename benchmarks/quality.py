"""Does ANT beat vanilla, Min-SNR and P2? Matched-step and matched-wall-clock quality (issue 7).

Every (setting, method, seed) is one run: train with `antdiff.train.Trainer`, evaluate the EMA
model every `--curve-every` steps (FD / precision / recall on `--curve-num` samples and the
held-out loss), then a final evaluation with `--fd-num` samples (one per guidance scale for the
class-conditional setting). Training time is clocked apart from evaluation, so the matched
wall-clock comparison reads each method's curve at vanilla's training time.

Paired by design: every model is evaluated with the same sampling seed (`--eval-seed`) and the
held-out loss uses the same fixed (image, t, noise) triples on ONE common partition (5 equal
timestep intervals) whatever clustering the run trained with, so differences between methods
are not drowned in sampling noise. The held-out loss is the unweighted epsilon MSE, i.e. the
objective that vanilla minimises: it is the primary metric because it is paired and precise, but
it favours vanilla by construction (Min-SNR and P2 trade it away on purpose).

Resumable: a run whose result JSON exists is skipped; a run cut short resumes from its last
checkpoint. Each run writes `RESULTS/SETTING/METHOD/seedN.json`; the summary goes to
`RESULTS/summary.json`. Run outputs (checkpoints) go to `--out` (git-ignored `runs/`).

    python benchmarks/quality.py --quick
    python benchmarks/quality.py --dataset digits --methods vanilla,min-snr,ant-uw-timestep \
        --seeds 0,1,2 --steps 2000 --workers 2 --plots docs/img
    ANTDIFF_MNIST=DIR python benchmarks/quality.py --dataset mnist --workers 1   # DIR: MNIST IDX
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Methods: name -> TrainConfig overrides. Baselines train on uniform t (what users run); ANT
# variants use the paper's stratified sampling over their k=5 intervals.
BASELINE = {"clusters": "timestep:5", "sampling": "uniform"}
VARIANTS: dict[str, dict[str, Any]] = {
    "vanilla": {"method": "mean", "weighting": "constant", **BASELINE},
    "min-snr": {"method": "mean", "weighting": "min-snr:5", **BASELINE},
    "p2": {"method": "mean", "weighting": "p2:gamma=1,k=1", **BASELINE},
    "famo-timestep": {"method": "famo", "clusters": "timestep:5"},
    "famo-same-batch-timestep": {
        "method": "famo",
        "clusters": "timestep:5",
        "method_options": {"same_batch": True},
    },
    "ant-uw-p2-timestep": {"method": "uw", "weighting": "p2:gamma=1,k=1", "clusters": "timestep:5"},
}
# Control: ANT's stratified sampling over the affinity intervals with the plain mean loss (no MTL
# method), to separate the effect of the timestep distribution from that of the MTL method.
VARIANTS["stratified-affinity"] = {"method": "mean", "clusters": "affinity:5"}
VARIANTS["stratified-log-snr"] = {"method": "mean", "clusters": "log-snr:5"}
for _m in ("uw", "pcgrad", "nash"):
    for _c in ("timestep", "log-snr", "affinity"):
        VARIANTS[f"ant-{_m}-{_c}"] = {"method": _m, "clusters": f"{_c}:5"}

# Settings: config of the run + how it is evaluated. `lr` about 1e-3..2e-3 converges in a few
# thousand steps here (2e-4 does not).
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"config": {"dataset": "digits", "batch_size": 64, "lr": 2e-3}, "steps": 2000},
    "digits-cond": {
        "config": {"dataset": "digits", "batch_size": 64, "lr": 2e-3, "conditional": True},
        "steps": 2000,
        "guidances": [1.0, 1.5, 2.0, 2.5, 3.0],
        "curve_guidance": 2.0,
    },
    "digits16": {
        "config": {"dataset": "digits", "resolution": 16, "batch_size": 64, "lr": 2e-3},
        "steps": 2000,
    },
    "toy": {
        "config": {
            "dataset": "toy:gaussians8",
            "model": "mlp",
            "batch_size": 1024,
            "lr": 1e-3,
            "holdout": 2000,
        },
        "steps": 3000,
    },
    "mnist": {
        "config": {
            "dataset": "mnist:{mnist}",
            "model": "unet-small",
            "batch_size": 128,
            "lr": 1e-3,
            "holdout": 1000,
        },
        "steps": 4000,
    },
}
PRIORITY = ["vanilla", "min-snr", "p2", "ant-uw-timestep", "ant-nash-timestep",
            "ant-pcgrad-timestep"]  # fmt: skip
ALL_METHODS = [*PRIORITY, "ant-uw-log-snr", "ant-nash-log-snr", "ant-pcgrad-log-snr",
               "famo-timestep", "famo-same-batch-timestep", "ant-uw-p2-timestep",
               "ant-uw-affinity", "ant-nash-affinity", "ant-pcgrad-affinity",
               "stratified-affinity", "stratified-log-snr"]  # fmt: skip
QUICK = {"dataset": "digits", "methods": "vanilla,min-snr,ant-uw-timestep", "seeds": "0,1",
         "steps": 300, "curve_every": 100, "curve_num": 200, "fd_num": 500, "sample_steps": 10,
         "heldout_per_interval": 128, "results": "benchmarks/results/quality-quick",
         "out": "runs/bench/quality-quick"}  # fmt: skip
# Beside the primary metric: precision/recall for images; for toys the outlier-robust MMD^2 and
# the mixture quality (share within 3 std of a mode, mode-histogram TV), since SWD and the mean
# log-likelihood are dominated by a few far samples.
EXTRAS = {"fd": ("precision", "recall"), "swd": ("mmd2", "in_3std", "mode_tv")}
DIGITS = {"fd": 2, "swd": 3}  # decimals of the primary metric in the tables
COMMON_PARTITION = "timestep:5"  # the held-out loss is read on these intervals for every run


# ----------------------------------------------------------------------------- one run
def run_config(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    """The TrainConfig values of one run."""
    setting = SETTINGS[args.dataset]
    values = {k: (v.format(mnist=args.mnist) if isinstance(v, str) else v)
              for k, v in setting["config"].items()}  # fmt: skip
    values.update(VARIANTS[method])
    if "affinity" in values["clusters"]:
        if not args.affinity:
            raise SystemExit(f"{method} needs --affinity FILE.npz (from `antdiff affinity`)")
        values["clusters"] = f"affinity:5:{args.affinity}"
    values.update(steps=args.steps, seed=seed, out=str(run_dir(args, method, seed)),
                  checkpoint_every=10**9, keep_checkpoints=1, num_samples=16,
                  sample_steps=args.sample_steps, device=args.device)  # fmt: skip
    if args.lr is not None:
        values["lr"] = args.lr
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    return values


def run_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    return Path(args.out) / args.dataset / method / f"seed{seed}"


def result_path(args: argparse.Namespace, method: str, seed: int) -> Path:
    return Path(args.results) / args.dataset / method / f"seed{seed}.json"


def evaluate_ema(trainer: Any, partition: Any, num: int, guidance: float, args: Any) -> dict:
    """Metrics of the trainer's EMA weights (held-out loss on the common partition)."""
    from antdiff.evaluate import evaluate_model

    with trainer.ema_weights() as model:
        res = evaluate_model(model, trainer.cfg, trainer.meta, trainer.schedule, partition,
                             num=num, sampler="ddim", steps=args.sample_steps,
                             guidance=guidance, seed=args.eval_seed,
                             per_interval=args.heldout_per_interval)  # fmt: skip
    return compact(res)


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The numbers we keep from one evaluation (no per-bin detail)."""
    keep = ("fd", "precision", "recall", "fd_halves", "fd_noise", "class_kl", "swd", "mmd2",
            "loglik", "in_3std", "mode_tv", "num_samples")  # fmt: skip
    out = {k: res[k] for k in keep if k in res}
    if "heldout" in res:
        out["heldout"] = res["heldout"]["mean"]
        out["heldout_intervals"] = [iv["mean"] for iv in res["heldout"]["intervals"]]
    return out


def run_one(job: tuple[argparse.Namespace, str, int]) -> dict[str, Any]:
    """Train + evaluate one (method, seed); write its result JSON; skip if it exists.

    With --reevaluate, an existing result gets its final evaluation redone from the run's last
    checkpoint (new metrics without retraining); its clocks and curve are kept.
    """
    args, method, seed = job
    out = result_path(args, method, seed)
    old = json.loads(out.read_text()) if out.is_file() else None
    if old is not None and not args.reevaluate:
        return old
    import torch

    torch.set_num_threads(args.threads)
    from antdiff import distributed
    from antdiff.checkpoint import latest_checkpoint
    from antdiff.config import make_config
    from antdiff.tasks import partition_from_spec
    from antdiff.train import Trainer

    cfg = make_config(run_config(args, method, seed))
    rdir = Path(cfg.out)
    resume = latest_checkpoint(rdir, missing_ok=True) is not None
    if old is not None and not resume:
        raise SystemExit(f"--reevaluate: {rdir} has no checkpoint (run directories are needed)")
    t_wall = time.perf_counter()
    trainer = Trainer(cfg, resume=resume)
    common = partition_from_spec(COMMON_PARTITION, trainer.schedule).partition
    setting = SETTINGS[args.dataset]
    curve_g = setting.get("curve_guidance", 1.0)
    curve_file = rdir / "curve.jsonl"
    curve = [json.loads(s) for s in curve_file.read_text().splitlines()] if resume else []
    curve = [c for c in curve if c["step"] <= trainer.step]
    train_s = curve[-1]["train_seconds"] if curve else 0.0
    if not curve:
        curve.append({"step": 0, "train_seconds": 0.0,
                      **evaluate_ema(trainer, common, args.curve_num, curve_g, args)})  # fmt: skip
    losses: list[float] = []
    while trainer.step < cfg.steps:
        t0 = time.perf_counter()
        row = trainer.train_step()
        train_s += time.perf_counter() - t0
        losses.append(row["loss"])
        if trainer.step % args.curve_every == 0 or trainer.step == cfg.steps:
            ev = evaluate_ema(trainer, common, args.curve_num, curve_g, args)
            curve.append({"step": trainer.step, "train_seconds": round(train_s, 3),
                          "train_loss": statistics.fmean(losses), **ev})  # fmt: skip
            losses = []
            trainer.save()
            curve_file.write_text("".join(json.dumps(c) + "\n" for c in curve))
    final = {}
    for g in setting.get("guidances", [1.0]):
        final[str(g)] = evaluate_ema(trainer, common, args.fd_num, g, args)
    distributed.teardown()
    if old is not None:  # --reevaluate: only the final evaluation is new
        if old["steps"] != trainer.step:
            raise SystemExit(f"{rdir}: checkpoint at step {trainer.step}, result at {old['steps']}")
        old.update(final=final, reevaluated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   command=command(args, [method], [seed]))  # fmt: skip
        old["eval"].update(fd_num=args.fd_num, sample_steps=args.sample_steps)
        out.write_text(json.dumps(old, indent=1))
        return old
    result = {
        "setting": args.dataset, "method": method, "seed": seed, "steps": cfg.steps,
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "device")},
        "partition": trainer.partition.to_dict(), "train_seconds": round(train_s, 2),
        "wall_seconds": round(time.perf_counter() - t_wall, 2), "resumed": resume,
        "eval": {"seed": args.eval_seed, "fd_num": args.fd_num, "curve_num": args.curve_num,
                 "sampler": "ddim", "sample_steps": args.sample_steps,
                 "heldout_partition": COMMON_PARTITION,
                 "heldout_per_interval": args.heldout_per_interval},
        "device": str(trainer.dist.device), "final": final, "curve": curve,
        "command": command(args, [method], [seed]),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    msg = (
        f"done {args.dataset} {method} seed {seed}: {primary(result)} in {result['wall_seconds']}s"
    )
    print(msg, flush=True)
    return result


def primary(result: dict[str, Any]) -> str:
    f = final_eval(result)
    key = "fd" if "fd" in f else "swd"
    return f"{key} {f[key]:.3f}, held-out {f.get('heldout', math.nan):.5f}"


def final_eval(result: dict[str, Any], guidance: str | None = None) -> dict[str, Any]:
    """The final evaluation at `guidance` (default: the setting's curve guidance)."""
    finals = result["final"]
    if guidance is None:
        guidance = str(SETTINGS[result["setting"]].get("curve_guidance", 1.0))
    return finals[guidance] if guidance in finals else next(iter(finals.values()))


def step_cost(args: argparse.Namespace, methods: list[str]) -> dict[str, float]:
    """ms per training step of each method, measured round-robin in ONE process (same load).

    The runs' own clocks are only comparable on a quiet machine; this probe interleaves the
    methods (warm-up, then `--cost-rounds` rounds of 10 steps each) so that drift in the machine
    load hits all of them alike. The median round gives ms/step.
    """
    import torch

    torch.set_num_threads(args.threads)
    from antdiff import distributed
    from antdiff.config import make_config
    from antdiff.train import Trainer

    trainers = {}
    for m in methods:
        if "affinity" in VARIANTS[m]["clusters"] and not args.affinity:
            continue
        values = run_config(args, m, 0)
        values["out"] = str(Path(args.out) / "_cost" / args.dataset / m)
        trainers[m] = Trainer(make_config(values))
    for tr in trainers.values():
        for _ in range(3):
            tr.train_step()
    rounds: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(args.cost_rounds):
        for m, tr in trainers.items():
            t0 = time.perf_counter()
            for _ in range(10):
                tr.train_step()
            rounds[m].append(100 * (time.perf_counter() - t0))
    distributed.teardown()
    return {m: round(statistics.median(v), 2) for m, v in rounds.items()}


def update_step_cost(args: argparse.Namespace, methods: list[str]) -> None:
    """Measure the step cost of `methods` (+ vanilla) into RESULTS/SETTING/step_cost.json."""
    path = Path(args.results) / args.dataset / "step_cost.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    todo = [m for m in dict.fromkeys(["vanilla", *methods]) if m not in old.get("ms", {})]
    if not todo:
        return
    if old and "vanilla" not in todo:  # re-measure vanilla beside the new ones, rescale
        todo = ["vanilla", *todo]
    ms = step_cost(args, todo)
    if old and "vanilla" in ms:
        scale = old["ms"]["vanilla"] / ms["vanilla"]
        ms = {m: round(v * scale, 2) for m, v in ms.items()}
    merged = {**old.get("ms", {}), **ms}
    path.parent.mkdir(parents=True, exist_ok=True)
    note = "ms/step, interleaved in one process, 1 thread; later additions rescaled to vanilla"
    path.write_text(json.dumps({"ms": merged, "note": note, "threads": args.threads}, indent=1))


# ----------------------------------------------------------------------------- summary
def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def curve_mean(runs: list[dict[str, Any]], key: str) -> list[tuple[int, float, float]]:
    """(step, mean, std) over seeds at the eval steps all runs share."""
    steps = sorted(set.intersection(*(set(c["step"] for c in r["curve"]) for r in runs)))
    rows = []
    for s in steps:
        vals = [next(c[key] for c in r["curve"] if c["step"] == s) for r in runs]
        rows.append((s, *mean_std(vals)))
    return rows


def steps_to_reach(curve: list[tuple[int, float, float]], target: float) -> int | None:
    """First eval step whose mean is at or below `target` (None: never)."""
    for step, mean, _ in curve:
        if step > 0 and mean <= target:
            return step
    return None


def at_step(run: dict[str, Any], step: int, key: str) -> tuple[int, float]:
    """(step, value) on the run's curve at `step`, linear between evaluation points."""
    pts = [(c["step"], c[key]) for c in run["curve"]]
    lo = max(p for p in pts if p[0] <= step)
    hi = min((p for p in pts if p[0] >= step), default=lo)
    if hi[0] == lo[0]:
        return step, lo[1]
    w = (step - lo[0]) / (hi[0] - lo[0])
    return step, (1 - w) * lo[1] + w * hi[1]


def summarize(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean/std over seeds, paired differences to vanilla, curves, budgets."""
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in ALL_METHODS}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    by_method = {m: runs for m, runs in by_method.items() if runs}
    metric = "fd" if "fd" in final_eval(results[0]) else "swd"
    base = {r["seed"]: r for r in by_method.get("vanilla", [])}
    base_curve = curve_mean(list(base.values()), metric) if base else []
    target = base_curve[-1][1] if base_curve else None
    cost_file = Path(args.results) / args.dataset / "step_cost.json"
    probe = json.loads(cost_file.read_text())["ms"] if cost_file.is_file() else {}
    methods: dict[str, Any] = {}
    for name, runs in by_method.items():
        runs.sort(key=lambda r: r["seed"])
        finals = [final_eval(r) for r in runs]
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "steps": runs[0]["steps"],
            "wall_seconds": round(statistics.fmean(r["wall_seconds"] for r in runs), 1),
            "train_seconds": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
            "ms_per_step": round(
                1000 * statistics.fmean(r["train_seconds"] / r["steps"] for r in runs), 2
            ),
            "command": command(args, [name], [r["seed"] for r in runs]),
        }
        for key in (metric, *EXTRAS[metric], "heldout", "loglik"):
            if any(key in f for f in finals):  # mean over the runs that have it
                m, s = mean_std([f.get(key) for f in finals])
                entry[f"{key}_mean"], entry[f"{key}_std"] = m, s
        if "heldout_intervals" in finals[0]:
            cols = list(zip(*(f["heldout_intervals"] for f in finals), strict=True))
            entry["heldout_intervals_mean"] = [statistics.fmean(c) for c in cols]
        paired = [r for r in runs if r["seed"] in base]
        if len(runs[0]["final"]) > 1:  # guidance sweep, with paired differences to vanilla
            entry["guidance"] = {}
            for g in runs[0]["final"]:
                m, s = mean_std([r["final"][g][metric] for r in runs])
                cell = {f"{metric}_mean": m, f"{metric}_std": s}
                if name != "vanilla" and paired:
                    diffs = [
                        r["final"][g][metric] - base[r["seed"]]["final"][g][metric] for r in paired
                    ]
                    cell["diff_mean"], cell["diff_std"] = mean_std(diffs)
                entry["guidance"][g] = cell
        if name != "vanilla" and paired:
            for key in (metric, "heldout"):
                if key not in finals[0]:
                    continue
                diffs = [final_eval(r)[key] - final_eval(base[r["seed"]])[key] for r in paired]
                m, s = mean_std(diffs)
                entry[f"{key}_diff_vs_vanilla"] = {"mean": m, "std": s, "n": len(diffs)}
            if "heldout_intervals" in finals[0]:
                rel = []
                for r in paired:
                    a, b = final_eval(r), final_eval(base[r["seed"]])
                    rel.append(
                        [
                            x / y - 1
                            for x, y in zip(
                                a["heldout_intervals"], b["heldout_intervals"], strict=True
                            )
                        ]
                    )
                entry["heldout_intervals_rel_vs_vanilla"] = [
                    statistics.fmean(c) for c in zip(*rel, strict=True)
                ]  # fmt: skip
        entry["curve"] = {k: curve_mean(runs, k) for k in (metric, "heldout")
                          if k in runs[0]["curve"][0]}  # fmt: skip
        if target is not None:
            entry["steps_to_vanilla_final"] = steps_to_reach(entry["curve"][metric], target)
        own = 1000 * statistics.fmean(r["train_seconds"] / r["steps"] for r in runs)
        base_own = 1000 * statistics.fmean(r["train_seconds"] / r["steps"] for r in base.values())
        ratio = probe[name] / probe["vanilla"] if name in probe and "vanilla" in probe else None
        entry["cost_vs_vanilla"] = round(ratio or own / base_own, 3) if base else None
        entry["cost_source"] = "interleaved probe" if ratio else "the runs' own clocks"
        if base:  # equal training wall-clock: the steps vanilla's time buys this method
            reach = int(runs[0]["steps"] * min(1.0, 1 / entry["cost_vs_vanilla"]))
            pts = [at_step(r, reach, metric) for r in runs]
            m, s = mean_std([v for _, v in pts])
            entry["equal_time"] = {"steps_affordable": reach, "step": pts[0][0],
                                   f"{metric}_mean": m, f"{metric}_std": s}  # fmt: skip
            if "heldout" in runs[0]["curve"][0]:
                hel = [at_step(r, reach, "heldout")[1] for r in runs]
                entry["equal_time"]["heldout_mean"], entry["equal_time"]["heldout_std"] = mean_std(
                    hel
                )
        methods[name] = entry
    return {"setting": args.dataset, "metric": metric, "vanilla_final_curve": target,
            "methods": methods}  # fmt: skip


def fmt(m: float, s: float, digits: int = 2) -> str:
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f} +/- {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


def fmt_g(m: float | None, s: float | None) -> str:
    """3 significant digits (for metrics of very different scales: MMD^2, shares, P/R)."""
    if m is None or not math.isfinite(m):
        return "-"
    return f"{m:.3g} +/- {s:.2g}" if s is not None and math.isfinite(s) else f"{m:.3g}"


def print_tables(summary: dict[str, Any]) -> None:
    metric = summary["metric"]
    extras = EXTRAS[metric]
    print(f"\n== {summary['setting']}: equal steps (mean +/- std over seeds) ==")
    head = (f"{'method':<22} {'n':>2} {metric + ' (final)':>17} {'held-out x1e3':>16} "
            f"{'d held-out vs van.':>19} " + " ".join(f"{x[:8]:>8}" for x in extras) +
            f" {'ms/step':>8} {'steps->van':>10}  command")  # fmt: skip
    print(head)
    for name, e in summary["methods"].items():
        hd = e.get("heldout_diff_vs_vanilla")
        d = fmt(1e3 * hd["mean"], 1e3 * hd["std"]) if hd else "-"
        cells = " ".join(f"{e.get(f'{x}_mean', math.nan):8.3g}" for x in extras)
        value = fmt(e[f"{metric}_mean"], e[f"{metric}_std"], DIGITS[metric])
        print(f"{name:<22} {len(e['seeds']):>2} {value:>17} "
              f"{fmt(1e3 * e.get('heldout_mean', math.nan), 1e3 * e.get('heldout_std', 0)):>16} "
              f"{d:>19} {cells} {e['ms_per_step']:8.1f} "
              f"{e.get('steps_to_vanilla_final')!s:>10}  {e['command']}")  # fmt: skip
    if any("equal_time" in e for e in summary["methods"].values()):
        print(f"\n== {summary['setting']}: equal training wall-clock (vanilla's time) ==")
        for name, e in summary["methods"].items():
            q = e["equal_time"]
            value = fmt(q[f"{metric}_mean"], q[f"{metric}_std"], DIGITS[metric])
            print(
                f"{name:<22} cost x{e['cost_vs_vanilla']:.2f}  steps {q['step']:>5}  "
                f"{metric} {value}  held-out x1e3 "
                f"{fmt(1e3 * q.get('heldout_mean', math.nan), 1e3 * q.get('heldout_std', 0))}"
            )
    for name, e in summary["methods"].items():
        if "guidance" in e:
            cells = "  ".join(f"g={g}: {fmt(v[f'{metric}_mean'], v[f'{metric}_std'])}"
                              for g, v in e["guidance"].items())  # fmt: skip
            print(f"{name:<22} guidance sweep {cells}")


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (for docs/results.md)."""
    metric, ms = summary["metric"], summary["methods"]
    m_up = metric.upper()
    any_run = next(iter(ms.values()))
    lines = [
        f"Equal steps ({any_run['steps']}); mean +/- std over n seeds; differences are paired "
        "per seed (method minus vanilla, same training seed, same evaluation seed).",
        "",
        f"| method | n | held-out loss x1e3 | d held-out vs vanilla | {m_up} final | "
        f"d {m_up} vs vanilla | " + " | ".join(EXTRAS[metric]) +
        f" | steps to vanilla's final {m_up} |",
        "|---|---|---|---|---|---|" + "---|" * len(EXTRAS[metric]) + "---|",
    ]  # fmt: skip
    for name, e in ms.items():
        hd, fd = e.get("heldout_diff_vs_vanilla"), e.get(f"{metric}_diff_vs_vanilla")
        lines.append(
            f"| {name} | {len(e['seeds'])} | "
            f"{fmt(1e3 * e.get('heldout_mean', math.nan), 1e3 * e.get('heldout_std', math.nan))} | "
            f"{fmt(1e3 * hd['mean'], 1e3 * hd['std']) if hd else '-'} | "
            f"{fmt(e[f'{metric}_mean'], e[f'{metric}_std'], DIGITS[metric])} | "
            f"{fmt(fd['mean'], fd['std'], DIGITS[metric]) if fd else '-'} | "
            + "".join(f"{fmt_g(e.get(f'{x}_mean'), e.get(f'{x}_std'))} | " for x in EXTRAS[metric])
            + f"{e.get('steps_to_vanilla_final') or 'not reached'} |"
        )
    if "heldout_intervals_rel_vs_vanilla" in json.dumps(ms):
        ivs = ["0-199", "200-399", "400-599", "600-799", "800-999"]
        lines += ["", "Held-out loss per timestep interval, relative to vanilla (paired, mean "
                  "over seeds; negative = lower loss than vanilla):", "",
                  "| method | " + " | ".join(f"t {i}" for i in ivs) + " |",
                  "|---|" + "---|" * len(ivs)]  # fmt: skip
        for name, e in ms.items():
            rel = e.get("heldout_intervals_rel_vs_vanilla")
            if rel:
                lines.append(f"| {name} | " + " | ".join(f"{100 * v:+.1f}%" for v in rel) + " |")
    source = next((e["cost_source"] for n, e in ms.items() if n != "vanilla"), "-")
    lines += ["", f"Equal training wall-clock (vanilla's {any_run['steps']} steps; cost from "
              f"{source}; values read on the convergence curve, "
              f"{summary.get('curve_num', '')} samples):", "",
              f"| method | cost x vanilla | steps in vanilla's time | {m_up} | held-out x1e3 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, e in ms.items():
        q = e.get("equal_time")
        if q:
            lines.append(
                f"| {name} | {e['cost_vs_vanilla']:.2f} | {q['step']} | "
                f"{fmt(q[f'{metric}_mean'], q[f'{metric}_std'], DIGITS[metric])} | "
                f"{fmt(1e3 * q.get('heldout_mean', math.nan), 1e3 * q.get('heldout_std', 0))} |"
            )
    sweeps = {n: e["guidance"] for n, e in ms.items() if "guidance" in e}
    if sweeps:
        gs = list(next(iter(sweeps.values())))
        lines += ["", f"Guidance sweep ({m_up}):", "", "| method | " + " | ".join(
            f"g={g}" for g in gs) + " |", "|---|" + "---|" * len(gs)]  # fmt: skip
        for n, sw in sweeps.items():
            cells = [fmt(sw[g][f"{metric}_mean"], sw[g][f"{metric}_std"]) for g in gs]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        paired = {n: sw for n, sw in sweeps.items() if "diff_mean" in sw[gs[0]]}
        if paired:
            lines += ["", f"Paired d {m_up} vs vanilla at each guidance (same seeds):", "",
                      "| method | " + " | ".join(f"g={g}" for g in gs) + " |",
                      "|---|" + "---|" * len(gs)]  # fmt: skip
        for n, sw in paired.items():
            cells = [fmt(sw[g]["diff_mean"], sw[g]["diff_std"]) for g in gs]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Commands (one per row; each reruns or resumes that row):", "", "```"]
    lines += [e["command"] for e in ms.values()]
    lines += ["```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot(
    summary: dict[str, Any], out_dir: Path, prefix: str, only: list[str] | None = None
) -> list[Path]:
    """Convergence curves (metric and held-out loss vs step) as PNGs (matplotlib Figure API)."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    metric, paths = summary["metric"], []
    for key, label in ((metric, metric.upper()), ("heldout", "held-out loss (common intervals)")):
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        for name, e in summary["methods"].items():
            if only and name not in only:
                continue
            rows = [r for r in e["curve"].get(key, []) if r[0] > 0]
            if not rows:
                continue
            x, m, s = (list(c) for c in zip(*rows, strict=True))
            s = [0.0 if not math.isfinite(v) else v for v in s]
            ax.plot(x, m, label=f"{name} (n={len(e['seeds'])})", lw=2 if name == "vanilla" else 1)
            ax.fill_between(x, [a - b for a, b in zip(m, s, strict=True)],
                            [a + b for a, b in zip(m, s, strict=True)], alpha=0.12)  # fmt: skip
        if key == metric and summary.get("vanilla_final_curve") is not None:
            ax.axhline(summary["vanilla_final_curve"], color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        note = f"{metric.upper()} on {summary.get('curve_num')} samples" if key == metric else ""
        ax.set_title(f"{summary['setting']}: mean +/- std over seeds {note}", fontsize=10)
        ax.legend(fontsize=7)
        path = out_dir / f"{prefix}-{summary['setting']}-{key}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- CLI
DEFAULTS = {"dataset": "digits", "methods": ",".join(PRIORITY), "seeds": "0,1,2", "steps": None,
            "curve_every": None, "curve_num": 500, "fd_num": 2000, "sample_steps": 25,
            "heldout_per_interval": 400, "eval_seed": 1234, "lr": None, "batch_size": None,
            "results": "benchmarks/results/quality", "out": "runs/bench/quality"}  # fmt: skip


def command(args: argparse.Namespace, methods: list[str], seeds: list[int]) -> str:
    """The command line that reproduces these runs (flags that change results only)."""
    parts = ["python", "benchmarks/quality.py"]
    if args.quick:
        parts.append("--quick")
    parts += ["--dataset", args.dataset, "--methods", ",".join(methods),
              "--seeds", ",".join(map(str, seeds))]  # fmt: skip
    base = {**DEFAULTS, **(QUICK if args.quick else {})}
    keys = ("steps", "curve_every", "curve_num", "fd_num", "sample_steps", "heldout_per_interval",
            "eval_seed", "lr", "batch_size", "results", "out")  # fmt: skip
    for key in keys:
        value = getattr(args, key)
        if value is not None and value != base.get(key):
            parts += [f"--{key.replace('_', '-')}", str(value)]
    if args.dataset == "mnist":
        parts = ["ANTDIFF_MNIST=DIR", *parts]
    if args.affinity and any("affinity" in m for m in methods):
        parts += ["--affinity", args.affinity]
    return shlex.join(parts).replace("'ANTDIFF_MNIST=DIR'", "ANTDIFF_MNIST=DIR")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check (a few minutes)")
    p.add_argument("--dataset", choices=list(SETTINGS), help="setting (default digits)")
    p.add_argument("--methods", help=f"comma list, or 'priority'/'all'; from {list(VARIANTS)}")
    p.add_argument("--seeds", help="comma list of training seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, help="training steps for every method")
    p.add_argument("--curve-every", type=int, help="evaluate every N steps (default steps/8)")
    p.add_argument("--curve-num", type=int, help="samples per curve evaluation (default 500)")
    p.add_argument("--fd-num", type=int, help="samples for the final FD (default 2000)")
    p.add_argument("--sample-steps", type=int, help="DDIM steps for sampling (default 25)")
    p.add_argument("--heldout-per-interval", type=int, help="held-out triples per interval")
    p.add_argument("--eval-seed", type=int, help="sampling + held-out seed, same for all runs")
    p.add_argument("--lr", type=float, help="override the setting's learning rate")
    p.add_argument("--batch-size", type=int, help="override the setting's batch size")
    p.add_argument("--affinity", help="affinity .npz for the *-affinity methods")
    p.add_argument(
        "--mnist",
        default=os.environ.get("ANTDIFF_MNIST"),
        help="MNIST IDX folder for --dataset mnist (or env ANTDIFF_MNIST)",
    )
    p.add_argument("--workers", type=int, default=2, help="runs side by side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--results", help="where result JSON goes")
    p.add_argument("--out", help="where run directories go (git-ignored)")
    p.add_argument("--plots", help="write convergence PNGs into this folder")
    p.add_argument("--plot-prefix", default="bench", help="PNG file name prefix")
    p.add_argument("--plot-methods", help="comma list of methods to plot (default all)")
    p.add_argument("--markdown", help="also write the tables as markdown to this file")
    p.add_argument("--summary-only", action="store_true", help="summarise existing results")
    p.add_argument(
        "--reevaluate",
        action="store_true",
        help="redo the final evaluations of finished runs from their checkpoints",
    )
    p.add_argument("--cost-rounds", type=int, default=5, help="step-cost probe rounds (0: skip)")
    args = p.parse_args(argv)
    base = {**DEFAULTS, **(QUICK if args.quick else {})}
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    setting = SETTINGS[args.dataset]
    if args.steps is None:
        args.steps = setting["steps"]
    if args.curve_every is None:
        args.curve_every = max(1, args.steps // 8)
    if args.methods in ("priority", "all"):
        args.methods = ",".join(PRIORITY if args.methods == "priority" else ALL_METHODS)
    unknown = [m for m in args.methods.split(",") if m not in VARIANTS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(VARIANTS)}")
    if args.dataset == "mnist" and not (args.mnist and Path(args.mnist).is_dir()):
        p.error("--dataset mnist needs --mnist DIR or ANTDIFF_MNIST=DIR (MNIST IDX files)")
    return args


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every result of this setting and step count in --results (all methods, all seeds)."""
    results = []
    for method in VARIANTS:
        for path in sorted((Path(args.results) / args.dataset / method).glob("seed*.json")):
            r = json.loads(path.read_text())
            if r["steps"] == args.steps:
                results.append(r)
    return results


def machine() -> dict[str, Any]:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = args.methods.split(",")
    seeds = [int(s) for s in str(args.seeds).split(",")]
    jobs = [(args, m, s) for s in seeds for m in methods]  # seed-major: pairs complete early
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    if not args.summary_only and args.workers > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            pool.map(run_one, jobs, chunksize=1)
    elif not args.summary_only:
        for job in jobs:
            run_one(job)
    if args.cost_rounds > 0 and not args.summary_only:
        update_step_cost(args, methods)
    results = collect(args)
    if not results:
        print("no results yet", file=sys.stderr)
        return 1
    summary = summarize(args, results)
    summary.update(machine=machine(), seconds=round(time.perf_counter() - t0, 1),
                   curve_num=args.curve_num, fd_num=args.fd_num,
                   command=command(args, methods, seeds),
                   setting_config=SETTINGS[args.dataset])  # fmt: skip
    path = Path(args.results) / f"summary-{args.dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    if args.quick:  # the acceptance file: per method fd_mean, fd_std, seeds, steps, wall_seconds
        (Path(args.results) / "summary.json").write_text(json.dumps(summary, indent=1))
    print_tables(summary)
    if args.plots:
        only = args.plot_methods.split(",") if args.plot_methods else None
        for p in plot(summary, Path(args.plots), args.plot_prefix, only):
            print(f"wrote {p}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(summary))
        print(f"wrote {args.markdown}")
    print(f"\nsummary: {path}  ({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

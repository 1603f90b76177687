"""Does ANT beat vanilla and today's alternatives? Matched-step and matched-wall-clock quality.

Each (setting, method, seed) is one run of the library's training loop with the `antdiff train`
flags of SETTINGS and VARIANTS (recorded in its result); the EMA model is evaluated every
`--curve-every` steps (training clocked apart), then on `--fd-num` samples per guidance scale.
Paired by design: one sampling seed for every model, and the held-out loss (the unweighted
prediction MSE, vanilla's own objective) on the same triples over ONE partition. Resumable.

    python benchmarks/quality.py --quick
    python benchmarks/quality.py --dataset digits --methods vanilla,min-snr --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from antdiff import build, distributed
from antdiff.cli import train_config
from antdiff.evaluate import Evaluator
from antdiff.metricrows import EvalRow
from antdiff.tasks import clustering_from_spec
from antdiff.train import Trainer
from bench_stats import compact, final_eval, heldout_bounds, summarize
from bench_tables import markdown, plot
from step_cost import machine, update_train_costs

SPEC = {"affinity": "affinity:5:{affinity}", "auto": "affinity:5:auto"}
ANT = {
    f"ant-{m}-{c}": f"--method {m} --clusters {SPEC.get(c, f'{c}:5')}"
    for m in ("uw", "pcgrad", "nash")
    for c in ("timestep", "log-snr", "affinity", "auto")
}
ONE = "--method mean --clusters timestep:1 --timestep-sampling"  # the plain mean over samples
VARIANTS: dict[str, str] = {  # `antdiff train` flags; stratified-*: no MTL; -wN/-bN: warm-up/bins
    "vanilla": "--method vanilla",
    "ant": "--ant",  # the recommended recipe of the objective (config.ANT_RECIPES)
    "min-snr": "--method min-snr",
    "p2": "--method p2",
    **ANT,
    "famo-timestep": "--method famo",
    "famo-same-batch-timestep": """--method famo --method-options '{"same_batch": true}'""",
    "ant-uw-p2-timestep": "--method uw --weighting p2",
    "stratified-affinity": "--method mean --clusters affinity:5:{affinity}",
    "stratified-log-snr": "--method mean --clusters log-snr:5",
    **{
        f"ant-uw-auto-{k}{v}": f"{ANT['ant-uw-auto']} --affinity-{f} {v}"
        for k, f, v in [*(("w", "warmup", n) for n in (20, 50, 100, 200, 300)), ("b", "bins", 50)]
    },
    "edm2": "--method edm2",
    "debiased": "--method debiased",
    "logit-normal": f"{ONE} logit-normal:0,1",
    "mode": f"{ONE} mode:1.29",
    "loss-aware": f"{ONE} loss-aware",
    **{
        f"ant-uw-auto-{s}": f"{ANT['ant-uw-auto']} --timestep-sampling {s}"
        for s in ("loss-aware", "logit-normal")
    },  # combinations: ANT-UW over the intervals, timesteps drawn so
    "ant-uw-auto-stratified-loss-aware": f"{ANT['ant-uw-auto']} --timestep-sampling "
    "stratified-loss-aware",  # loss-aware inside each interval, B/K per interval
    **{  # ANT as a sampler: interval density after UW's weights, floor 0.5 (benchmarks/variance.py)
        f"ant-uw-auto-follow{n}": "--method sampled:uw --clusters affinity:5:auto "
        f"--timestep-sampling follow:0.5,0.95,{i}"
        for n, i in (("", 2), ("-pure", 0))
    },
    **{  # intervals by the first-order decrease w_i sum_j G_ij (docs/decrease.md), unit weight
        f"ant-{m}-auto-decrease": f"--method sampled:{m} --clusters affinity:5:auto "
        "--timestep-sampling decrease:0.5,0.9,0,10,0.01"
        for m in ("uw", "pcgrad")
    },
}
VARIANTS.update(
    {
        f"flow-{m}": f"--objective flow {VARIANTS[m]}"
        for m in (
            "vanilla",  # SD3's t:
            "logit-normal",
            "ant-uw-timestep",
            "ant-uw-log-snr",
            "ant-uw-auto",
            "ant-uw-auto-w100",
            "ant-uw-auto-logit-normal",
            "ant-uw-auto-follow",
            "ant-uw-auto-follow-pure",
            "ant",
        )
    }
)
DIGITS = "--dataset digits --batch-size 64 --lr 2e-3"
CPU28 = "--model unet-small --conditional --batch-size 32 --lr 1e-3 --holdout 1000"
REAL = {"steps": 2500, "fid": True, "curve_every": 1250, "curve_num": 1000}
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"flags": DIGITS, "steps": 2000},
    "digits-cond": {
        "flags": f"{DIGITS} --conditional",
        "steps": 2000,
        "guidances": [1.0, 1.5, 2.0, 2.5, 3.0],
        "curve_guidance": 2.0,
    },
    "digits16": {"flags": f"{DIGITS} --resolution 16", "steps": 2000},
    "toy": {
        "flags": "--dataset toy:gaussians8 --model mlp --batch-size 1024 --lr 1e-3 --holdout 2000",
        "steps": 3000,
    },
    # 28x28 real data (the `animals`/`mnist` presets): Inception FID on --fd-num samples, and on
    # --curve-num at each curve point (the half-way one shows "vanilla's FID in half the steps")
    "animals": {"flags": f"--dataset animals {CPU28}", **REAL},
    "mnist": {"flags": f"--dataset mnist:{{mnist}} {CPU28}", **REAL},
    # the same on one GPU (benchmarks/gpu.sh): 4x the batch, twice the steps
    "animals-gpu": {
        "flags": f"--dataset animals {CPU28.replace('32', '128')}",
        **REAL,
        "steps": 5000,
    },
}
PRIORITY = "vanilla,min-snr,p2,ant-uw-timestep,ant-nash-timestep,ant-pcgrad-timestep"
COMMON_PARTITION = "timestep:5"  # the held-out loss is read on these intervals for every run
DEFAULTS = {
    "dataset": "digits",
    "methods": PRIORITY,
    "seeds": "0,1,2",
    "steps": None,
    "curve_every": None,
    "curve_num": None,
    "fd_num": 2000,
    "sample_steps": 25,
    "heldout_per_interval": 400,
    "eval_seed": 1234,
    "lr": None,
    "batch_size": None,
    "results": "benchmarks/results/quality",
    "out": "runs/bench/quality",
}
QUICK = {
    "methods": "vanilla,min-snr,ant-uw-timestep",
    "seeds": "0,1",
    "steps": 300,
    "curve_every": 100,
    "curve_num": 200,
    "fd_num": 500,
    "sample_steps": 10,
    "heldout_per_interval": 128,
    "results": "benchmarks/results/quality-quick",
    "out": "runs/bench/quality-quick",
}


def train_flags(args: argparse.Namespace, method: str, seed: int) -> str:
    """The `antdiff train` flags of one row (what it trains; outputs are added by run_one)."""
    flags = f"{SETTINGS[args.dataset]['flags']} {VARIANTS[method]} --steps {args.steps} --seed "
    if "{affinity}" in flags and not args.affinity:
        raise SystemExit(f"{method} needs --affinity FILE.npz (from `antdiff affinity`)")
    flags += str(seed) + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k in ("lr", "batch_size")
        if (v := getattr(args, k)) is not None
    )
    return flags.replace("{affinity}", str(args.affinity)).replace("{mnist}", str(args.mnist))


def evaluator(trainer: Trainer, args: argparse.Namespace, num: int, guidance: float) -> Any:
    """The benchmark's evaluation of a model of `trainer`'s run, compacted (with the Inception
    FID where the setting asks for it)."""
    cfg, noise = trainer.cfg, build.schedule(trainer.cfg)
    common = clustering_from_spec(COMMON_PARTITION, noise).partition
    ev = Evaluator(
        cfg,
        trainer.run.info,
        noise,
        num=num,
        sampler=cfg.sampler,
        steps=args.sample_steps,
        guidance=guidance,
        seed=args.eval_seed,
        partition=common,
        per_interval=args.heldout_per_interval,
        fid=SETTINGS[args.dataset].get("fid", False),
    )
    return lambda model: compact(ev(model))


def run_one(job: tuple[argparse.Namespace, str, int]) -> dict[str, Any]:
    """Train + evaluate one (method, seed) and write its result JSON; skip it if it exists (with
    --reevaluate: evaluate the guidance scales it lacks from the run's last checkpoint, all of
    them if --fd-num changed; the curve is kept)."""
    args, method, seed = job
    out = Path(args.results) / args.dataset / method / f"seed{seed}.json"
    old = json.loads(out.read_text()) if out.is_file() else None
    if old is not None and not args.reevaluate:
        return old
    torch.set_num_threads(args.threads)
    flags = train_flags(args, method, seed)
    rdir = Path(args.out) / args.dataset / method / f"seed{seed}"
    every = args.curve_every
    outputs = (
        f" --out {rdir} --checkpoint-every {every} --keep-checkpoints 1 --log-every "
        f"{every} --eval-every {every} --eval-num {args.curve_num} --sample-steps "
        f"{args.sample_steps} --num-samples 16 --device {args.device}"
    )
    cfg = train_config(shlex.split(flags + outputs))
    resume = (rdir / "config.json").is_file()
    if old is not None and not resume:
        raise SystemExit(f"--reevaluate: {rdir} is gone (run directories are needed)")
    t_wall = time.perf_counter()
    curve_guidance = SETTINGS[args.dataset].get("curve_guidance", 1.0)
    done = old["final"] if old is not None and args.fd_num == old["eval"]["fd_num"] else {}
    with Trainer.start(cfg, resume=resume) as trainer:
        trainer.evaluator = evaluator(trainer, args, args.curve_num, curve_guidance)
        trainer.fit()
        with trainer.ema_weights() as model:  # --reevaluate keeps scales already measured
            final = {
                str(g): done.get(str(g)) or evaluator(trainer, args, args.fd_num, g)(model)
                for g in args.guidances
            }
    distributed.teardown()
    command = reproduce(args, [method], [seed])
    if old is not None:  # --reevaluate: only the final evaluation is new
        old.update(final=final, command=command, reevaluated=time.strftime("%Y-%m-%d"))
        old["eval"].update(fd_num=args.fd_num, sample_steps=args.sample_steps)
        out.write_text(json.dumps(old, indent=1))
        return old
    rows = trainer.run.metrics()
    curve = [
        {"step": r.step, "train_seconds": r.time, **r.eval} for r in rows if isinstance(r, EvalRow)
    ]
    result = {
        "setting": args.dataset,
        "method": method,
        "seed": seed,
        "steps": cfg.steps,
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "device")},
        "partition": trainer.parts.partition.to_dict(),
        "train_seconds": curve[-1]["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t_wall, 2),
        "resumed": resume,
        "eval": {
            "seed": args.eval_seed,
            "fd_num": args.fd_num,
            "curve_num": args.curve_num,
            "sampler": cfg.sampler,
            "sample_steps": args.sample_steps,
            "heldout_partition": COMMON_PARTITION,
            "heldout_per_interval": args.heldout_per_interval,
        },
        "device": str(trainer.dist.device),
        "final": final,
        "curve": curve,
        "command": command,
        "overhead_seconds": auto[0]["measure_seconds"] if (auto := trainer.run.tasks()) else 0.0,
        "train_command": "antdiff train " + flags,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    primary = final_eval(result, str(curve_guidance))
    print(f"done {args.dataset} {method} seed {seed}: {primary} in {result['wall_seconds']}s")
    return result


def reproduce(args: argparse.Namespace, methods: list[str], seeds: list[int]) -> str:
    """The command line that reproduces these runs (flags that change results only)."""
    parts = [
        "python",
        "benchmarks/quality.py",
        *(["--quick"] if args.quick else []),
        "--dataset",
        args.dataset,
        "--methods",
        ",".join(methods),
        "--seeds",
        ",".join(map(str, seeds)),
    ]
    base = vars(parse_args([*parts[2:], "--mnist", str(args.mnist)]))  # these runs' defaults
    for key in [*list(DEFAULTS)[3:], "guidances"]:  # what changes results (after the above)
        if (value := getattr(args, key)) is not None and value != base[key]:
            value = ",".join(map(str, value)) if key == "guidances" else value
            parts += [f"--{key.replace('_', '-')}", str(value)]
    if args.affinity and any("affinity" in m for m in methods):
        parts += ["--affinity", args.affinity]
    line = shlex.join(parts)
    return f"ANTDIFF_MNIST=DIR {line}" if args.dataset == "mnist" else line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check (a few minutes)")
    p.add_argument("--dataset", choices=list(SETTINGS), help="setting (default digits)")
    p.add_argument("--methods", help=f"comma list or 'all'; from {list(VARIANTS)}")
    p.add_argument("--guidances", help="comma list of guidance scales (default: the setting's)")
    for name in ("seeds", "results", "out", "affinity", "plots", "plot_methods", "markdown"):
        p.add_argument(f"--{name.replace('_', '-')}")  # --plots DIR: convergence PNGs
    for name in (
        "steps",
        "curve_every",
        "curve_num",
        "fd_num",
        "sample_steps",
        "heldout_per_interval",
        "eval_seed",
        "batch_size",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int)
    p.add_argument("--lr", type=float, help="override the setting's learning rate")
    p.add_argument("--mnist", default=os.environ.get("ANTDIFF_MNIST"), help="MNIST IDX folder")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--plot-prefix", default="bench")
    p.add_argument("--summary-only", action="store_true", help="summarise existing results")
    p.add_argument("--reevaluate", action="store_true", help="redo finished runs' final evaluation")
    p.add_argument("--cost-rounds", type=int, default=5, help="step-cost probe rounds (0: skip)")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    setting = SETTINGS[args.dataset]
    args.steps = args.steps or setting["steps"]
    args.curve_every = args.curve_every or setting.get("curve_every") or max(1, args.steps // 8)
    args.curve_num = args.curve_num or setting.get("curve_num", 500)
    scales = args.guidances.split(",") if args.guidances else setting.get("guidances", [1.0])
    args.guidances = [float(g) for g in scales]
    args.methods = ",".join(VARIANTS) if args.methods == "all" else args.methods
    unknown = [m for m in args.methods.split(",") if m not in VARIANTS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(VARIANTS)}")
    if args.dataset == "mnist" and not (args.mnist and Path(args.mnist).is_dir()):
        p.error("--dataset mnist needs --mnist DIR or ANTDIFF_MNIST=DIR (MNIST IDX files)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods, seeds = args.methods.split(","), [int(s) for s in str(args.seeds).split(",")]
    jobs = [(args, m, s) for s in seeds for m in methods]  # seed-major: pairs complete early
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    if not args.summary_only:  # each run in a fresh process
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            pool.map(run_one, jobs, chunksize=1)
    cost_file = Path(args.results) / args.dataset / "step_cost.json"
    costs = json.loads(cost_file.read_text())["ms"] if cost_file.is_file() else None
    if not args.summary_only and args.cost_rounds > 0:  # ms/step side by side (auto: after the
        torch.set_num_threads(args.threads)  # switch, whose bounds do not change the cost)
        argvs = {
            m: shlex.split(
                f"{train_flags(args, m, 0)} --device {args.device}".replace(
                    "affinity:5:auto", "timestep:5"
                )
            )
            for m in ["vanilla", *methods]
        }
        costs = update_train_costs(cost_file, argvs, args.cost_rounds)
    files = [p for m in VARIANTS for p in sorted(Path(args.results, args.dataset, m).glob("s*"))]
    results = [r for p in files if (r := json.loads(p.read_text()))["steps"] == args.steps]
    if not results:
        raise SystemExit("no results yet")
    guidance = str(SETTINGS[args.dataset].get("curve_guidance", 1.0))
    extra = Path(args.results) / args.dataset / "overheads.json"  # pre-runs, in vanilla steps
    overheads = json.loads(extra.read_text())["steps"] if extra.is_file() else {}
    summary = summarize(
        results,
        guidance=guidance,
        costs=costs,
        overheads=overheads,
        command=lambda m, s: reproduce(args, [m], s),
    )
    summary.update(
        machine=machine(),
        seconds=round(time.perf_counter() - t0, 1),
        curve_num=args.curve_num,
        fd_num=args.fd_num,
        command=reproduce(args, methods, seeds),
        setting=args.dataset,
        heldout_intervals=heldout_bounds(results[0]),
    )
    path = Path(args.results) / f"summary-{args.dataset}.json"
    for file in [path, *([Path(args.results) / "summary.json"] if args.quick else [])]:
        file.write_text(json.dumps(summary, indent=1))  # summary.json: the --quick check's file
    print(tables := markdown(summary))
    if args.markdown:
        Path(args.markdown).write_text(tables)
    if args.plots:
        only = args.plot_methods.split(",") if args.plot_methods else None
        print("wrote", *plot(summary, Path(args.plots), args.plot_prefix, only))
    print(f"summary: {path}  ({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: each command parses its flags and makes one library call (antdiff.api)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from antdiff.cliflags import Parser, add_config_flags, json_object
from antdiff.config import FIELDS, PRESETS, TrainConfig, read_config_file, resolve
from antdiff.diffusion.guidance import parse_guidance_interval
from antdiff.diffusion.samplers import SAMPLERS
from antdiff.diffusion.schedule import SCHEDULES
from antdiff.distributed import peer_lost
from antdiff.errors import AntError, Interrupted, out_of_memory
from antdiff.rundir import read_config
from antdiff.tasks import COSTS


def _cluster(args: argparse.Namespace) -> int:
    from antdiff import build
    from antdiff.report import plot_partition
    from antdiff.tasks import cluster_timesteps, load_affinity
    from antdiff.validation import check_schedule

    # the schedule alone: cluster needs no training config (whose other checks, such as
    # sample_steps <= timesteps, are not its user's concern)
    check_schedule(args.objective, args.schedule, args.timesteps, args.flow_shift)
    schedule = build.make_schedule(args.objective, args.schedule, args.timesteps, args.flow_shift)
    affinity = load_affinity(args.affinity) if args.affinity else None
    if affinity is not None and args.cost != "affinity":
        raise AntError("--affinity is only used with --cost affinity")
    result = cluster_timesteps(args.cost, args.k, schedule, affinity)
    part = result.partition
    log_snr = schedule.snr_numpy(log=True)
    if args.plot:
        plot_partition(part, log_snr, args.plot, title=f"{args.cost} clustering, k={args.k}")
    if args.json:
        print(
            json.dumps(
                {
                    "intervals": [list(iv) for iv in part.intervals],
                    "cost": args.cost,
                    "total": result.total,
                    "k": part.k,
                    "timesteps": part.timesteps,
                    "schedule": schedule.name,
                }
            )
        )
        return 0
    print(
        f"{args.cost} clustering of {part.timesteps} timesteps ({schedule.name} schedule) "
        f"into k={part.k} intervals; total cost {result.total:.6g}"
    )
    print(f"{'task':>4}  {'t range':>13}  {'log-SNR range':>17}  {'size':>5}")
    for i, (l, r) in enumerate(part.intervals):
        span = f"[{l}, {r}]"
        print(f"{i:>4}  {span:>13}  {log_snr[l]:>8.3f} .. {log_snr[r]:<7.3f}  {r - l + 1:>5}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    flags = {name: getattr(args, name) for name in FIELDS}
    for key in ("model_options", "method_options"):
        if flags[key] is not None:
            flags[key] = json_object(flags[key], key)
    base = None
    if args.resume:  # the run's own config, changed only by what is given again
        if flags["out"] is None:
            raise AntError("--resume needs --out RUN (the run directory to continue)")
        base = read_config(flags["out"]).to_dict()
    return resolve(args.preset, args.config, base, ant=args.ant, **flags)


def train_config(argv: Sequence[str]) -> TrainConfig:
    """The config that `antdiff train ARGV` trains with (for scripts that train in-process)."""
    return _train_config(build_parser().parse_args(["train", *argv]))


def _train(args: argparse.Namespace) -> int:
    from antdiff.api import train

    cfg = _train_config(args)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    run = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {run.path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from antdiff.api import sample

    path = sample(
        args.run,
        args.num,
        args.out,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        guidance_interval=parse_guidance_interval(args.guidance_interval),
        seed=args.seed,
        device=args.device,
    )
    print(f"{args.num} samples written to {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from antdiff.api import export

    print(f"diffusers model written to {export(args.run, args.out)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from antdiff.api import evaluate

    result = evaluate(
        args.run,
        device=args.device,
        num=args.num,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        guidance_interval=parse_guidance_interval(args.guidance_interval),
        seed=args.seed,
        fid=args.fid,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        if not isinstance(value, dict | list):
            print(f"{key:>16}: {value}")
    for row in result.get("heldout", {}).get("intervals", []):
        print(f"held-out loss {row['interval']}: {row['mean']:.5f} +- {row['sem']:.5f}")
    print(f"written to {Path(args.run) / 'metrics.json'}")
    return 0


def _fid(args: argparse.Namespace) -> int:
    from antdiff.api import fid

    print(f"{fid(args.a, args.b, device=args.device):.4f}")
    return 0


def _affinity(args: argparse.Namespace) -> int:
    from antdiff.analysis.affinity import summary_line
    from antdiff.api import affinity

    result, npz, report = affinity(
        args.run,
        args.out,
        checkpoints=args.checkpoints,
        bins=args.bins,
        probe=args.probe,
        sketch_dim=args.sketch_dim,
        projection=args.projection,
        ema=args.weights == "ema",
        seed=args.seed,
        device=args.device,
    )
    print(summary_line(result))
    print(f"written to {npz} (+ affinity.npy, affinity.png); report {report}")
    return 0


INTERVAL_HELP = (
    "guidance only on these noise levels, fractions of the range (t/T; flow: sigma), "
    "elsewhere the conditional model alone (default 0,1: every step)"
)
TRANSFER_FLAGS = (
    "dataset",
    "resolution",
    "model",
    "steps",
    "batch_size",
    "lr",
    "ema_decay",
    "objective",
    "schedule",
    "flow_shift",
    "holdout",
)


def _transfer(args: argparse.Namespace) -> int:
    from antdiff.analysis.transfer import TransferPlan, run_transfer
    from antdiff.report import summary_table

    base = {
        **PRESETS.get(args.preset or "", {}),
        **(read_config_file(args.config) if args.config else {}),
    }
    base.update({k: getattr(args, k) for k in TRANSFER_FLAGS if getattr(args, k) is not None})
    if args.seeds < 1:
        raise AntError(f"--seeds must be >= 1, got {args.seeds}")
    plan = TransferPlan(
        base,
        intervals=args.intervals,
        seeds=list(range(args.seeds)),
        method=args.method,
        budget=args.budget,
        out=args.out,
        num_samples=args.num_samples,
        sampler=args.sampler,
        sample_steps=args.sample_steps,
        per_interval=args.per_interval,
        jobs=args.jobs,
        runs=args.runs,
    )
    result = run_transfer(plan)
    print(summary_table(result))
    print(f"written to {Path(args.out) / 'transfer.json'} (+ transfer.png, report.html)")
    return 0


def _add_analysis_parsers(sub: argparse._SubParsersAction) -> None:
    """`antdiff affinity` (O1) and `antdiff transfer` (O2)."""
    a = sub.add_parser("affinity", help="task affinity between timestep bins (O1), heat maps")
    a.add_argument("--run", required=True, metavar="DIR")
    a.add_argument(
        "--checkpoints",
        default="last",
        metavar="last|all|LIST",
        help="checkpoints to average over: last, all kept, or steps like 500,1000",
    )
    a.add_argument("--bins", type=int, default=50, help="equal timestep bins (default 50)")
    a.add_argument("--probe", type=int, default=64, help="fixed probe images (default 64)")
    a.add_argument("--sketch-dim", type=int, default=1024, help="sketch size M; 0: exact")
    a.add_argument("--projection", choices=["countsketch", "gaussian"], default="countsketch")
    a.add_argument(
        "--weights",
        choices=["raw", "ema"],
        default="raw",
        help="raw training iterates (the paper's) or EMA weights",
    )
    a.add_argument("--seed", type=int, default=0, help="probe, noise and projection seed")
    a.add_argument("--device", default="cpu")
    a.add_argument("--out", metavar="DIR", help="default: RUN/affinity (shown in report.html)")
    a.set_defaults(func=_affinity)

    t = sub.add_parser("transfer", help="negative-transfer gap of interval specialists (O2)")
    t.add_argument("--preset", choices=list(PRESETS), help="shared training settings")
    t.add_argument("--config", metavar="FILE", help="shared training settings (JSON/TOML)")
    add_config_flags(t, TRANSFER_FLAGS)
    t.add_argument("--intervals", default="timestep:5", help="timestep:K, log-snr:K, or L:R,...")
    t.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (default 3)")
    t.add_argument("--method", default="vanilla", help="generalist: vanilla or an ANT method")
    t.add_argument(
        "--budget",
        choices=["steps", "samples"],
        default="steps",
        help="specialist steps: the generalist's, or steps*|I|/T (equal samples)",
    )
    t.add_argument("--num-samples", type=int, default=500, help="samples per FD (default 500)")
    t.add_argument("--sampler", choices=SAMPLERS, help="default: ddim (DDPM), euler (flow)")
    t.add_argument("--sample-steps", type=int, default=50)
    t.add_argument("--per-interval", type=int, default=128, help="held-out triples/interval")
    t.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    t.add_argument("--out", default="runs/transfer", metavar="DIR")
    t.add_argument("--runs", metavar="DIR", help="run directories (default --out); shared = reused")
    t.set_defaults(func=_transfer)


def build_parser() -> argparse.ArgumentParser:
    from antdiff import __version__

    p = Parser(prog="antdiff", description=__doc__)
    p.add_argument("--version", action="version", version=f"antdiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    c = sub.add_parser("cluster", help="split timesteps into k intervals by exact DP")
    c.add_argument("--objective", choices=["ddpm", "flow"], default="ddpm")
    c.add_argument("--schedule", choices=list(SCHEDULES), default="linear", help="DDPM's")
    c.add_argument("--flow-shift", type=float, default=1.0, help="flow matching's (SD3) shift")
    c.add_argument("--timesteps", type=int, default=1000, help="timesteps (flow: bins of t)")
    c.add_argument("-k", type=int, default=5, help="number of intervals (tasks)")
    c.add_argument(
        "--cost",
        choices=COSTS,
        default="timestep",
        help="snr = raw SNR as the official code; log-snr gives balanced intervals",
    )
    c.add_argument("--affinity", metavar="FILE", help="task-affinity matrix (.npy, or .npz)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--plot", metavar="FILE.png", help="draw log-SNR over t with the intervals")
    c.set_defaults(func=_cluster)

    t = sub.add_parser("train", help="train a diffusion model with ANT or a baseline")
    t.add_argument("--preset", choices=list(PRESETS), help="named starting configuration")
    t.add_argument("--config", metavar="FILE", help="settings from a JSON or TOML file")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--ant",
        action="store_true",
        help="the recommended ANT recipe of the objective, written out in config.json (DDPM: "
        "uw over affinity:5:auto, stratified; flow: anchored:uw over affinity:5:auto, "
        "logit-normal)",
    )
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_config_flags(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="draw samples from a run's EMA model, or from an export")
    s.add_argument("--run", required=True, metavar="DIR", help="a run, or an `antdiff export`")
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--sampler", choices=SAMPLERS, help="default: ddim (DDPM), euler (flow)")
    s.add_argument("--steps", type=int, default=None, help="default: T for ddpm, else 50")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    s.add_argument("--guidance-interval", default="0,1", metavar="LO,HI", help=INTERVAL_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--out", required=True, metavar="FILE", help="FILE.npz (+ .png) or FILE.png")
    s.set_defaults(func=_sample)

    v = sub.add_parser("evaluate", help="FD, precision/recall, held-out loss per interval")
    v.add_argument("--run", required=True, metavar="DIR")
    v.add_argument("--num", type=int, default=500, help="number of samples")
    v.add_argument("--sampler", choices=SAMPLERS, help="default: ddim (DDPM), euler (flow)")
    v.add_argument("--steps", type=int, default=50)
    v.add_argument("--guidance", type=float, default=1.0)
    v.add_argument("--guidance-interval", default="0,1", metavar="LO,HI", help=INTERVAL_HELP)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    v.add_argument(
        "--fid",
        action="store_true",
        help="also the standard Inception FID (needs ant-diffusion[fid])",
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=_evaluate)

    f = sub.add_parser("fid", help="standard Inception FID of two image sets (extra [fid])")
    for side in ("a", "b"):
        f.add_argument(side, metavar=side.upper(), help="image folder, .npz, or data set spec")
    f.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    f.set_defaults(func=_fid)

    e = sub.add_parser("export", help="write a run's EMA model as a diffusers pipeline")
    e.add_argument("--run", required=True, metavar="DIR")
    e.add_argument("--out", required=True, metavar="DIR")
    e.set_defaults(func=_export)
    _add_analysis_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; what a user can fix is one line on stderr and a non-zero status: 2 for
    bad input or a failed write, 130/143 for a run stopped by SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as e:
        message, code = str(e), e.code
    except AntError as e:
        message, code = str(e), 2
    except OSError as e:  # a write or read the system refused (permissions, a full disk, ...)
        message, code = f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), 2
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    except RuntimeError as e:
        if peer_lost(e):
            message, code = "another process of this torchrun job stopped (see its message)", 2
        elif not out_of_memory(e):
            raise
        else:
            message, code = "out of memory: lower --batch-size (or --resolution, the model)", 2
    sys.stderr.write(f"antdiff {args.command}: error: {message}\n")  # one write: ranks share it
    return code


if __name__ == "__main__":
    sys.exit(main())

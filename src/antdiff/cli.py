"""Command line: thin wrappers that parse flags and call one library function each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from antdiff.errors import AntError

Command = Callable[[argparse.Namespace], int]


def _cluster(args: argparse.Namespace) -> int:
    from antdiff.schedule import NoiseSchedule
    from antdiff.tasks import cluster_schedule, load_affinity

    schedule = NoiseSchedule.from_name(args.schedule, args.timesteps)
    affinity = load_affinity(args.affinity) if args.affinity else None
    if affinity is not None and args.cost != "affinity":
        raise AntError("--affinity is only used with --cost affinity")
    result = cluster_schedule(args.cost, args.k, schedule, affinity)
    part = result.partition
    if args.plot:
        from antdiff.plots import plot_partition

        plot_partition(part, schedule, args.plot, title=f"{args.cost} clustering, k={args.k}")
    if args.json:
        out = {
            "intervals": [list(iv) for iv in part.intervals],
            "cost": result.cost,
            "k": part.k,
            "timesteps": part.timesteps,
            "objective": args.cost,
            "schedule": args.schedule,
        }
        print(json.dumps(out))
        return 0
    log_snr = schedule.snr_numpy(log=True)
    print(
        f"{args.cost} clustering of {part.timesteps} timesteps ({args.schedule} schedule) "
        f"into k={part.k} intervals; total cost {result.cost:.6g}"
    )
    print(f"{'task':>4}  {'t range':>13}  {'log-SNR range':>17}  {'size':>5}")
    for i, (l, r) in enumerate(part.intervals):
        span = f"[{l}, {r}]"
        print(f"{i:>4}  {span:>13}  {log_snr[l]:>8.3f} .. {log_snr[r]:<7.3f}  {r - l + 1:>5}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from antdiff import __version__
    from antdiff.schedule import SCHEDULES
    from antdiff.tasks import COSTS

    p = _Parser(prog="antdiff", description=__doc__)
    p.add_argument("--version", action="version", version=f"antdiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("cluster", help="split timesteps into k intervals by exact DP")
    c.add_argument("--schedule", choices=list(SCHEDULES), default="linear")
    c.add_argument("--timesteps", type=int, default=1000)
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AntError as e:
        print(f"antdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

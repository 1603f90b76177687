"""Peak memory of `antdiff affinity` on a 32x32 model vs the model's own training step.

Each measurement is a fresh subprocess; its peak resident set size (max RSS) comes from
os.wait4. Processes measured:
  floor     import antdiff, load the run's model (what every process pays)
  train     `antdiff train` for a few steps (batch 64): the training footprint
  sketch    `antdiff affinity` with the default count-sketch (B bins x M floats of sketches)
  gaussian  the same with the Gaussian sketch (G x P gradient buffer, bounded random blocks)
  exact     `--sketch-dim 0`: the naive approach, B x P floats of gradients
The naive B x P x 4 bytes is also printed. Target (issue 6): sketch within 2x of train.

    python benchmarks/affinity_memory.py [--steps 3] [--bins 50] [--probe 64] [--skip-exact]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed: {' '.join(argv)}\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, wall  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="training steps to measure")
    p.add_argument("--bins", type=int, default=50)
    p.add_argument("--probe", type=int, default=64)
    p.add_argument("--sketch-dim", type=int, default=1024)
    p.add_argument("--skip-exact", action="store_true", help="skip the naive B x P run")
    p.add_argument("--skip-gaussian", action="store_true", help="skip the Gaussian sketch run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "affinity_memory.json"))
    args = p.parse_args()
    exe = [sys.executable, "-m", "antdiff"]
    with tempfile.TemporaryDirectory(prefix="affmem-") as work:
        run = Path(work) / "run"
        train = [
            *exe,
            "train",
            "--dataset",
            "digits",
            "--resolution",
            "32",
            "--model",
            "unet-small",
            "--method",
            "vanilla",
            "--steps",
            str(args.steps),
            "--batch-size",
            "64",
            "--num-samples",
            "2",
            "--sample-steps",
            "2",
            "--checkpoint-every",
            str(args.steps),
            "--out",
            str(run),
        ]
        rows = {"train": peak_rss(train)}
        code = (
            "import sys; from antdiff.build import trained_model; from antdiff.rundir import "
            "RunDir; from antdiff.models import count_parameters; "
            "print(count_parameters(trained_model(RunDir.open(sys.argv[1]))))"
        )
        rows["floor"] = peak_rss([sys.executable, "-c", code, str(run)])
        params = int(subprocess.check_output([sys.executable, "-c", code, str(run)]).decode())
        aff = [
            *exe,
            "affinity",
            "--run",
            str(run),
            "--bins",
            str(args.bins),
            "--probe",
            str(args.probe),
        ]
        rows["sketch"] = peak_rss(
            [*aff, "--sketch-dim", str(args.sketch_dim), "--out", f"{work}/a1"]
        )
        if not args.skip_gaussian:
            rows["gaussian"] = peak_rss(
                [
                    *aff,
                    "--sketch-dim",
                    str(args.sketch_dim),
                    "--projection",
                    "gaussian",
                    "--out",
                    f"{work}/a2",
                ]
            )
        if not args.skip_exact:
            rows["exact"] = peak_rss([*aff, "--sketch-dim", "0", "--out", f"{work}/a3"])
    naive = args.bins * params * 4 / 2**20
    train_mib = rows["train"][0]
    print(
        f"unet-small on digits at 32x32: P = {params:,} parameters; bins B = {args.bins}, "
        f"probe {args.probe}, sketch M = {args.sketch_dim}; naive B x P floats = {naive:.0f} MiB"
    )
    print(
        f"{'process':>10}  {'peak RSS MiB':>12}  {'over floor':>10}  {'/ train':>8}  {'wall s':>7}"
    )
    for name, (mib, wall) in rows.items():
        print(
            f"{name:>10}  {mib:>12.0f}  {mib - rows['floor'][0]:>10.0f}  "
            f"{mib / train_mib:>8.2f}  {wall:>7.1f}"
        )
    ok = rows["sketch"][0] <= 2 * train_mib
    print(f"target sketch <= 2 x train: {'met' if ok else 'MISSED'}")
    result = {
        "params": params,
        "bins": args.bins,
        "probe": args.probe,
        "sketch_dim": args.sketch_dim,
        "train_steps": args.steps,
        "batch_size": 64,
        "naive_mib": naive,
        "peak_rss_mib": {k: v[0] for k, v in rows.items()},
        "wall_s": {k: v[1] for k, v in rows.items()},
        "target_met": ok,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

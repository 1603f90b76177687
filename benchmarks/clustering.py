"""DP interval clustering time vs a naive O(k T^3) reference (the official code's approach).

    python benchmarks/clustering.py [--repeats 5] [--out benchmarks/results/clustering.json]

Ours: O(1) interval costs from prefix sums, a vectorised O(k T^2) DP. Naive: the same DP with
each interval cost recomputed from a numpy slice in Python loops (about 4 s at T=1000, k=5
for the official implementation). Median of --repeats runs; the naive reference runs once and
only where it takes less than about a minute (T <= 1000).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from antdiff.diffusion import NoiseSchedule
from antdiff.tasks import cluster_timesteps


def naive_dp(v: np.ndarray, k: int) -> float:
    """Reference DP with an O(T) median cost per interval: O(k T^3) in all."""
    T = len(v)

    def cost(l: int, r: int) -> float:
        seg = v[l : r + 1]
        return float(np.abs(seg - seg[(r - l) // 2]).sum())

    D = [cost(0, r) for r in range(T)]
    for j in range(1, k):
        D = [
            min((D[m] + cost(m + 1, r) for m in range(j - 1, r)), default=np.inf) for r in range(T)
        ]
    return D[T - 1]


def time_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/clustering.json")
    args = ap.parse_args()
    rows = []
    print(
        f"{'T':>5} {'k':>3} {'timestep ms':>12} {'log-snr ms':>11} {'naive ms':>10} {'speed-up':>9}"
    )
    for T in (100, 1000, 4000):
        schedule = NoiseSchedule.from_name("linear", T)
        log_snr = schedule.snr_numpy(log=True)
        for k in (2, 5, 10):
            ts, ls = (
                time_ms(lambda o=o, k=k, s=schedule: cluster_timesteps(o, k, s), args.repeats)
                for o in ("timestep", "log-snr")
            )
            naive = None
            if T <= 1000:
                start = time.perf_counter()
                ref = naive_dp(log_snr, k)
                naive = (time.perf_counter() - start) * 1e3
                ours = cluster_timesteps("log-snr", k, schedule).total
                assert abs(ref - ours) <= 1e-9 * max(1.0, abs(ref)), (T, k, ref, ours)
            rows.append({"T": T, "k": k, "timestep_ms": ts, "log_snr_ms": ls, "naive_ms": naive})
            speed = f"{naive / ls:.0f}x" if naive else "-"
            naive_s = f"{naive:.0f}" if naive else "skipped"
            print(f"{T:>5} {k:>3} {ts:>12.1f} {ls:>11.1f} {naive_s:>10} {speed:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps({"meta": meta, "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

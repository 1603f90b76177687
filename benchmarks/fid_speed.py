"""Cost of the standard Inception FID on this machine (realbench's budget: 2,000 samples in at
most 4 minutes on 2 idle cores).

    python benchmarks/fid_speed.py [--dataset animals] [--num 2000] [--threads 2]

Times the two parts of `antdiff fid` on NUM real images of the data set against NUM others (the
held-out split against a seeded random draw of the training images, so the FID is a
real-vs-real floor): the
Inception features (28 -> 299 resize, pool3) and the Frechet distance (the 2048 x 2048 matrix
square root). Needs `pip install 'ant-diffusion[fid]'` (and `[animals]` for the animals).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from antdiff.data import load_dataset
from antdiff.metrics.inception import Inception
from antdiff.metrics.inception_fid import feature_stats, fid_from_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="animals")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/fid_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    train, heldout = data.split(min(args.num, len(data) // 2), seed=0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    a, b = heldout.x[: args.num], train.x[order[: args.num]]  # (animals' files: sorted by class)
    net = Inception()
    start = time.perf_counter()
    stats = [feature_stats(net.features(x, progress=False)) for x in (a, b)]
    features = time.perf_counter() - start
    start = time.perf_counter()
    fid = fid_from_stats(*stats)
    frechet = time.perf_counter() - start
    row = {
        "dataset": args.dataset,
        "num": len(a),
        "threads": args.threads,
        "features_seconds_per_set": round(features / 2, 1),
        "frechet_seconds": round(frechet, 1),
        "fid_of_one_sample_set_seconds": round(features / 2 + frechet, 1),
        "fid_real_vs_real": round(fid, 3),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print("| data | N | threads | features per set (s) | Frechet (s) | one FID of N samples (s) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.dataset} | {len(a)} | {args.threads} | {row['features_seconds_per_set']} | "
        f"{row['frechet_seconds']} | {row['fid_of_one_sample_set_seconds']} |"
    )
    print(f"FID held-out vs training images: {fid:.3f}; load average {row['load_average']}")
    Path(args.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()

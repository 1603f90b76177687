"""Helpers of the end-to-end tests: a run's final weights, `antdiff train` in 2 processes
under torchrun, and the check that two runs ended with the same weights."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from antdiff import checkpoint

# No attention in DDP comparisons: a key bias has an exactly zero true gradient (softmax is
# shift invariant), so Adam turns its float noise into O(lr) steps that no two reduction
# orders agree on.
NO_ATTENTION = {
    "down_block_types": ["DownBlock2D"] * 2,
    "up_block_types": ["UpBlock2D"] * 2,
    "add_attention": False,
}


def final_weights(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(checkpoint.latest(run) / name)


def torchrun(port_base: int = 29500, ports: int = 400) -> list[str]:
    """The command that starts 2 CPU processes under torchrun, on a random port of the range
    (tests that leave a launcher behind use a range of their own)."""
    port = port_base + random.randrange(ports)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]


def train_two_processes(argv: list[str], out: Path) -> None:
    """`antdiff train ARGV --out OUT` under torchrun with 2 CPU processes (gloo)."""
    cmd = [
        *torchrun(),
        "-m",
        "antdiff",
        "train",
        *argv,
        f"--out={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def assert_same_weights(one: Path, two: Path, rtol: float = 1e-4) -> None:
    """Each parameter tensor of the two runs' final weights within `rtol` (relative norm: Adam
    amplifies rounding noise on near-zero gradients elementwise, so compare tensors)."""
    a, b = final_weights(one), final_weights(two)
    for k in a:
        rel = (a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)
        assert rel <= rtol, (k, float(rel))

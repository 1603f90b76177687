"""ANT inside accelerate loops: equal to the plain loop in one process and in 2 (CPU, gloo), with
gradient accumulation; with accelerate's GradScaler (fp16 autocast on CPU) within fp16
tolerance, the scale moving once per step and an overflowing step skipped; the diffusers-style
example runs under `accelerate launch` with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("accelerate_mtl.py")
METHODS = {"mean", "uw", "famo", "pcgrad", "nash"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def launch(processes: int) -> list[str]:
    """accelerate's launcher; on CPU, `--multi_gpu` is what starts several (gloo) processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if processes == 1:
        return [sys.executable]
    return [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def run_harness(tmp_path: Path, processes: int, *flags: str) -> dict:
    out = tmp_path / "acc.json"
    proc = subprocess.run(
        [*launch(processes), str(SCRIPT), str(out), *flags],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.exists(), f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("processes", [1, 2])
def test_accelerate_loop_equals_plain_loop(tmp_path: Path, processes: int) -> None:
    results = run_harness(tmp_path, processes)
    assert results.pop("processes") == processes
    assert set(results) == METHODS
    assert all(d < 1e-5 for d in results.values()), results


def test_accelerate_fp16_scaler(tmp_path: Path) -> None:
    results = run_harness(tmp_path, 1, "--scaler")
    for name in METHODS:
        assert results[name] < 5e-3, (name, results[name])  # fp16 autocast forward
        # growth_interval 1 from 2**10: doubles once per finite step, halves once on overflow
        scales = [results[f"{name}:scale_after_{s}"] for s in range(4)]
        assert scales == [2.0**11, 2.0**12, 2.0**13, 2.0**12], (name, scales)
        assert results[f"{name}:overflow_skipped"] is True


def test_example_under_accelerate_launch(tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    images = tmp_path / "images"
    images.mkdir()
    for i, digit in enumerate(load_digits().images[:64]):
        Image.fromarray((digit * 255 / 16).astype(np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    args = [
        "--train-data-dir",
        str(images),
        "--resolution",
        "16",
        "--train-batch-size",
        "8",
        "--gradient-accumulation-steps",
        "2",
        "--num-steps",
        "4",
        "--checkpointing-steps",
        "2",
        "--ant-method",
        "uw",
        "--ant-clusters",
        "log-snr:3",
        "--output-dir",
        str(out),
    ]
    script = ROOT / "examples" / "train_unconditional_accelerate.py"
    proc = subprocess.run(
        [*launch(2), str(script), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 4 steps" in proc.stdout
    # one 2-process job (DDP over gloo without a GPU), not two independent copies
    assert proc.stdout.count("done:") == 1 and "2 processes, weights in sync" in proc.stdout
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_example_refuses_a_folder_smaller_than_one_batch(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f"{i}.png")
    args = ["--train-data-dir", str(images), "--resolution", "8", "--train-batch-size", "6"]
    script = ROOT / "examples" / "train_unconditional_accelerate.py"
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--output-dir", str(tmp_path / "out")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "train_unconditional_accelerate.py: error: "
        f"{images} holds 5 images, fewer than one batch (6 x 1 processes)"
    ]

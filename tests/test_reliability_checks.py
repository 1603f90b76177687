"""Checks that come first and what a process does on the way in: `cluster` needs no training
config, Ctrl-C while the CLI imports is one line, ranks of one torchrun job must agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from antdiff.cli import main
from runs import torchrun

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = [
    "--dataset",
    "toy:gaussians8",
    "--model",
    "mlp",
    "--model-options",
    '{"hidden": 16, "depth": 2}',
    "--timesteps",
    "20",
    "--steps",
    "2",
    "--num-samples",
    "2",
    "--sample-steps",
    "2",
    "--device",
    "cpu",
]


def test_cluster_of_few_timesteps_needs_no_training_config(capsys) -> None:
    """A T below the training defaults' 50 sampling steps clusters (it once failed on them)."""
    assert main(["cluster", "--timesteps", "7", "-k", "3", "--cost", "log-snr", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["timesteps"] == 7 and len(result["intervals"]) == 3
    assert result["intervals"][0][0] == 0 and result["intervals"][-1][1] == 6


SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS)
def test_a_signal_while_importing_is_one_line(sig, code, word) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "antdiff", "train", *TINY, "--out", "never"],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # importing torch takes seconds
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"antdiff: error: {word}"]


def test_sample_of_a_run_with_fewer_than_50_timesteps(tmp_path: Path) -> None:
    """The default of 50 sampling steps (ddim) is capped at T (it was a diffusers traceback)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, f"--out={run}"]) == 0
    assert main(["sample", "--run", str(run), "--num", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "s.npz").exists()


def _torchrun(argv: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        *torchrun(29900, 90),
        str(Path(__file__).with_name("rank_flags.py")),
        "train",
        *argv,
        "--",
        *extra,
    ]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ranks_with_other_flags_are_refused(tmp_path: Path) -> None:
    """Rank 1 started with another seed (it trained on with other weights): refused by name.
    The fuzz script (benchmarks/fuzz.py) tries --lr, --method and --clusters too."""
    out, field = tmp_path / "run", "seed"
    proc = _torchrun([*TINY, f"--out={out}"], ["--seed", "7"])
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("antdiff train: error")]
    assert ours and all(f"another --{field} " in line for line in ours), proc.stderr[-3000:]
    assert not out.exists()  # refused before any rank touched the run directory


@pytest.mark.slow
def test_a_killed_worker_is_one_line_on_the_survivor(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    cmd = [
        *torchrun(29900, 90),
        "-m",
        "antdiff",
        "train",
        *TINY,
        "--steps=100000",
        "--checkpoint-every=20",
        f"--out={out}",
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = psutil.Process(proc.pid).children()
    rank1 = [w for w in workers if w.environ().get("RANK") == "1"]
    assert rank1, "no worker of rank 1"
    rank1[0].kill()
    err = proc.communicate(timeout=120)[1].decode()
    launcher = err.find("torch/distributed/run.py")  # torchrun's own report of the failure
    workers_part = err[: err.rfind("Traceback", 0, launcher)] if launcher >= 0 else err
    assert "Traceback" not in workers_part, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("antdiff train:")]
    assert len(ours) <= 1 and all("another process" in line for line in ours), err[-3000:]

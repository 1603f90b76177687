"""--clusters affinity:K:auto: the warm-up trains vanilla, the tasks come from the DP over the
measured affinity, the run records them; resume is exact across the switch; two processes equal
one, the measurement included."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff import checkpoint
from antdiff.cli import main, train_config
from antdiff.config import TrainConfig
from antdiff.diffusion import NoiseSchedule
from antdiff.errors import AntError
from antdiff.tasks import cluster_timesteps
from antdiff.train import Trainer
from antdiff.validation import affinity_warmup
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

AUTO = [
    "--dataset",
    "digits",
    "--batch-size",
    "16",
    "--num-samples",
    "4",
    "--sample-steps",
    "2",
    "--clusters",
    "affinity:5:auto",
    "--affinity-warmup",
    "12",
    "--affinity-bins",
    "8",
    "--affinity-probe",
    "16",
    "--method",
    "uw",
    "--log-every",
    "3",
]
# The CLI with each affinity measurement announced in a file and slowed down, so that a test can
# kill the process inside one (argv[1]: the file; argv[2:]: the train flags).
SLOW_MEASURE = """
import sys, time
from pathlib import Path
import antdiff.affinity.auto as a
real, marker = a.affinity_matrix, Path(sys.argv[1])
def slow(*args, **kw):
    marker.write_text(str(int(marker.read_text() or 0) + 1) if marker.exists() else "1")
    time.sleep(0.5)
    return real(*args, **kw)
a.affinity_matrix = slow
from antdiff.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("auto") / "whole"
    argv = [*AUTO, "--steps", "24", "--checkpoint-every", "3", "--out", str(run)]
    assert main(["train", *argv]) == 0
    return run


@pytest.mark.slow
def test_the_warm_up_is_vanilla_and_the_tasks_come_from_the_measured_affinity(whole: Path):
    tasks = json.loads((whole / "tasks.json").read_text())
    assert tasks["step"] == 12 and tasks["snapshots"] == [4, 8, 12] and tasks["bins"] == 8
    z = np.load(whole / "tasks.npz")
    assert z["snapshots"].shape == (3, 8, 8) and z["edges"].tolist()[-1] == 1000
    np.testing.assert_array_equal(z["affinity"], np.round(z["snapshots"].mean(0), 4))
    # the intervals are the exact DP's over the recorded matrix, and the run trains on them
    best = cluster_timesteps("affinity", 5, NoiseSchedule.from_name("linear", 1000), z["affinity"])
    assert [list(iv) for iv in best.partition.intervals] == tasks["intervals"]
    info = json.loads((whole / "run.json").read_text())
    assert info["partition"]["intervals"] == tasks["intervals"]
    assert info["clustering_cost"] == "affinity"
    logged = rows(whole)
    warm = [r for r in logged if "task_weights" in r and r["step"] <= 12]
    after = [r for r in logged if "task_weights" in r and r["step"] > 12]
    assert all(r["task_weights"] == [0.2] * 5 for r in warm)  # vanilla: the plain mean
    assert after and all(len(set(r["task_weights"])) > 1 for r in after)  # UW moves its weights
    switch = next(r for r in logged if "tasks" in r)
    assert switch["step"] == 12 and switch["time"] == tasks["warmup_seconds"] > 0
    times = [r["time"] for r in logged if "time" in r]
    assert times == sorted(times)  # the measurement is part of the training time
    assert "Tasks chosen from the measured affinity" in (whole / "report.html").read_text()
    # the recorded matrix clusters a new run by hand too
    argv = ["cluster", "-k", "5", "--cost", "affinity", "--affinity", str(whole / "tasks.npz")]
    assert main(argv) == 0


def _kill_at(run: Path, argv: list[str], ready, tmp_path: Path) -> None:
    marker = tmp_path / "measured"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SLOW_MEASURE, str(marker), *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not ready(marker):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _measured(n: int):
    return lambda marker: marker.is_file() and marker.read_text() == str(n)


@pytest.mark.slow
@pytest.mark.parametrize(
    "when",
    [
        "during the warm-up, inside the 2nd measurement",
        "inside the last measurement",
        "after the switch",
    ],
)
def test_resume_is_exact_across_the_switch(whole: Path, tmp_path: Path, when: str) -> None:
    cut = tmp_path / "cut"
    argv = [*AUTO, "--steps", "24", "--checkpoint-every", "3", "--out", str(cut)]
    if when.startswith("during"):
        ready = _measured(2)
    elif when.startswith("inside"):
        ready = _measured(3)
    else:  # a checkpoint written after step 12, with a random delay
        delay = random.uniform(0, 0.5)
        ready = lambda m: (  # noqa: E731
            (p := checkpoint.latest(cut, missing_ok=True)) is not None
            and checkpoint.step_of(p) >= 15
            and time.sleep(delay) is None
        )
    _kill_at(cut, argv, ready, tmp_path)
    assert main(["train", "--resume", "--out", str(cut)]) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = final_weights(whole, name), final_weights(cut, name)
        assert all(torch.equal(a[k], b[k]) for k in a), (when, name)
    assert (
        json.loads((cut / "tasks.json").read_text())["intervals"]
        == json.loads((whole / "tasks.json").read_text())["intervals"]
    )


@pytest.mark.slow
def test_two_processes_equal_one_the_measurement_included(tmp_path: Path) -> None:
    argv = [
        *AUTO,
        "--steps",
        "18",
        "--checkpoint-every",
        "18",
        "--batch-size",
        "15",
        f"--model-options={json.dumps(NO_ATTENTION)}",
    ]
    assert main(["train", *argv, "--out", str(tmp_path / "one")]) == 0
    train_two_processes(argv, tmp_path / "two")
    one, two = (json.loads((tmp_path / r / "tasks.json").read_text()) for r in ("one", "two"))
    assert one["intervals"] == two["intervals"]
    za, zb = np.load(tmp_path / "one" / "tasks.npz"), np.load(tmp_path / "two" / "tasks.npz")
    np.testing.assert_allclose(za["snapshots"], zb["snapshots"], atol=2e-3)
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_the_default_warm_up_is_2_percent_and_at_least_one_step_per_snapshot() -> None:
    assert affinity_warmup(TrainConfig(steps=1000)) == 20
    assert affinity_warmup(TrainConfig(steps=3000)) == 60
    assert affinity_warmup(TrainConfig(steps=50, affinity_snapshots=3)) == 3
    assert affinity_warmup(TrainConfig(steps=1000, affinity_warmup=7)) == 7


def test_a_resume_with_other_steps_keeps_the_warm_up_schedule_it_began(tmp_path: Path) -> None:
    """--steps may change on resume, and with it the default warm-up (2% of the steps); the
    snapshots already begun must not move, else a due one could be skipped."""
    flags = [a for a in AUTO if a not in ("--affinity-warmup", "12")]  # the default warm-up
    first = train_config([*flags, "--steps", "300", "--out", str(tmp_path / "r")])
    with Trainer.start(first) as t:
        assert t.auto.at == [2, 4, 6]
        for _ in range(3):
            t.train_step()
            assert t.auto.measure_if_due(t.step, t.model, t.dist) is None
        t.save()
    shorter = train_config([*flags, "--steps", "150", "--out", str(tmp_path / "r")])
    assert affinity_warmup(shorter) == 3  # a fresh run of 150 steps would measure at 1, 2, 3
    with Trainer.start(shorter, resume=True) as t:
        assert t.step == 3 and t.auto.at == [2, 4, 6] and len(t.auto.matrices) == 1
        t.auto.at = [1, 2, 3]  # had it been recomputed from the new steps: step 4 is past 2
        with pytest.raises(AntError, match="snapshot due at step 2 was missed"):
            t.auto.measure_if_due(4, t.model, t.dist)


def test_a_run_recorded_during_its_warm_up_by_an_older_version_resumes_exactly(
    whole: Path, tmp_path: Path
) -> None:
    """Older versions recorded the warm-up as the clustering cost "warm-up" (run.json and the
    checkpoint), with no `warming_up`: such a run is read as warming up and resumes exactly."""
    out = tmp_path / "old"
    cfg = train_config([*AUTO, "--steps", "24", "--checkpoint-every", "3", "--out", str(out)])
    with Trainer.start(cfg) as t:
        assert t.parts.info.warming_up and t.parts.info.clustering_cost == "timestep"
        for _ in range(6):
            t.train_step()
            assert t.auto.measure_if_due(t.step, t.model, t.dist) is None
        t.save()
    record = json.loads((out / "run.json").read_text())
    assert record["warming_up"] is True
    del record["warming_up"]
    (out / "run.json").write_text(json.dumps({**record, "clustering_cost": "warm-up"}))
    state_pt = checkpoint.latest(out) / checkpoint.STATE
    state = torch.load(state_pt, weights_only=True)
    state.pop("warming_up", None)
    torch.save({**state, "clustering_cost": "warm-up"}, state_pt)
    with Trainer.start(train_config(["--resume", "--out", str(out)]), resume=True) as t:
        info = t.parts.info
        assert (info.warming_up, info.clustering_cost, t.step) == (True, "timestep", 6)
        assert t.auto is not None and len(t.auto.matrices) == 1
    assert main(["train", "--resume", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["warming_up"] is False and record["clustering_cost"] == "affinity"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = final_weights(whole, name), final_weights(out, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

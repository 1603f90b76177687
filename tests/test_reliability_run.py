"""The run directory and what reads it: a resume never erases logged history, every command
trusts the checkpoint's own config over an edited config.json, odd files in a run are not
tracebacks, a live run (checkpoints written and pruned meanwhile) reads consistently, and
signals or a full disk outside the training loop lose nothing and leave no partial output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from antdiff import api, checkpoint, export
from antdiff.cli import main
from antdiff.errors import AntError
from antdiff.rundir import RunDir

TOY = [
    "--dataset",
    "toy:gaussians8",
    "--model",
    "mlp",
    "--model-options",
    '{"hidden": 16, "depth": 2}',
    "--batch-size",
    "32",
    "--num-samples",
    "8",
    "--sample-steps",
    "4",
    "--timesteps",
    "100",
    "--log-every",
    "1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
AFFINITY = ["--bins", "4", "--probe", "8", "--sketch-dim", "16"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished toy run: 4 steps, checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished") / "R"
    assert main(["train", *TOY, "--steps", "4", "--checkpoint-every", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, to damage."""
    return Path(shutil.copytree(finished, tmp_path / "R"))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------ 1. history
@pytest.mark.parametrize("damage", ["deleted", "a file"])
def test_a_resume_without_checkpoints_keeps_the_logged_history(
    run: Path, damage: str, capsys
) -> None:
    metrics = (run / "metrics.jsonl").read_bytes()
    shutil.rmtree(run / "checkpoints")
    if damage == "a file":
        (run / "checkpoints").write_text("")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "6"]) == 2
    err = one_line(capsys)
    assert "logged steps up to 4" in err and "start over" in err
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_a_run_stopped_before_its_first_log_still_starts_again(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "--resume", "--out", str(run), "--steps", "3"]) == 0
    assert checkpoint.step_of(checkpoint.latest(run)) == 3


# ------------------------------------------------------------------ 2. the checkpoint's config
EDITS = [("seed", 7), ("batch_size", 16), ("timesteps", 200), ("clusters", "timestep:3")]


def edit_config(run: Path, key: str, value: object) -> None:
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg[key] != value
    path.write_text(json.dumps({**cfg, key: value}))


@pytest.mark.parametrize(("key", "value"), EDITS, ids=[k for k, _ in EDITS])
def test_a_resume_refuses_a_config_json_its_checkpoint_contradicts(
    run: Path, key: str, value: object, capsys
) -> None:
    edit_config(run, key, value)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "6"]) == 2
    err = one_line(capsys)
    assert "does not match its checkpoint step_0000004" in err and key in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize(
    "command",
    [
        "sample --run {R} --num 4 --out {T}/s.npz",
        "evaluate --run {R} --num 4 --steps 2",
        "export --run {R} --out {T}/e",
        f"affinity --run {{R}} {' '.join(AFFINITY)}",
    ],
    ids=["sample", "evaluate", "export", "affinity"],
)
def test_every_reader_refuses_a_config_json_its_checkpoint_contradicts(
    run: Path, tmp_path: Path, command: str, capsys
) -> None:
    edit_config(run, "prediction", "v")
    capsys.readouterr()
    argv = command.replace("{R}", str(run)).replace("{T}", str(tmp_path)).split()
    assert main(argv) == 2
    assert "prediction" in one_line(capsys)
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "e").exists()


def test_what_a_resume_may_change_is_not_a_mismatch(run: Path, tmp_path: Path) -> None:
    edit_config(run, "lr", 1e-4)  # as `--resume --lr` records it
    assert main(["sample", "--run", str(run), "--num", "4", "--out", str(tmp_path / "s.npz")]) == 0


# ------------------------------------------------------------------ 5. odd files
def test_a_stray_folder_among_the_checkpoints_is_left_alone(run: Path, tmp_path: Path) -> None:
    stray = run / "checkpoints" / "step_0000004.bak"
    shutil.copytree(checkpoint.latest(run), stray)
    (run / "checkpoints" / "step_old").mkdir()
    assert main(["affinity", "--run", str(run), "--checkpoints", "all", *AFFINITY]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "8"]) == 0
    assert checkpoint.step_of(checkpoint.latest(run)) == 8
    assert stray.is_dir() and (run / "checkpoints" / "step_old").is_dir()


def test_tasks_npz_is_written_whole_and_read_as_one_line(run: Path, monkeypatch) -> None:
    rundir = RunDir.open(run)
    arrays = (np.eye(3), [np.eye(3)], np.arange(4))
    rundir.write_tasks({"step": 2}, *arrays)
    whole = (run / "tasks.npz").read_bytes()

    def partial(file, **arrays):
        file.write(b"PK\x03\x04 cut short")
        no_space()

    monkeypatch.setattr(np, "savez", partial)
    with pytest.raises(AntError, match="No space left"):
        rundir.write_tasks({"step": 3}, *arrays)
    monkeypatch.undo()
    assert (run / "tasks.npz").read_bytes() == whole  # the previous record, whole
    assert json.loads((run / "tasks.json").read_text()) == {"step": 2}
    (run / "tasks.npz").write_bytes(whole[:100])
    with pytest.raises(AntError, match=r"tasks\.npz is unreadable"):
        rundir.tasks()


@pytest.fixture(scope="module")
def exported(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "e"
    assert main(["export", "--run", str(finished), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: '{"family": "mlp", "model": ', "not valid JSON"),
        (lambda m: "[1, 2]", "JSON object"),
        (lambda m: json.dumps({**m, "scheduler": "DDPMPipeline"}), "unknown scheduler"),
        (lambda m: json.dumps({**m, "family": "vae"}), "unknown model family"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "timesteps"}), "timesteps"),
    ],
    ids=["truncated", "not an object", "not a scheduler", "family", "no timesteps"],
)
def test_a_damaged_export_is_one_line(exported, tmp_path: Path, damage, message, capsys) -> None:
    copy = Path(shutil.copytree(exported, tmp_path / "e"))
    meta = json.loads((copy / "antdiff.json").read_text())
    (copy / "antdiff.json").write_text(damage(meta))
    capsys.readouterr()
    assert main(["sample", "--run", str(copy), "--num", "2", "--out", str(tmp_path / "s.png")]) == 2
    assert message in one_line(capsys)


# ------------------------------------------------------------------ 6. a live run
def add_checkpoint(run: Path, step: int) -> None:
    """What a running training does: a newer checkpoint, then `latest` points at it."""
    root = run / "checkpoints"
    shutil.copytree(checkpoint.latest(run), root / f"step_{step:07d}")
    (root / "latest").write_text(f"step_{step:07d}")


def test_evaluate_labels_the_weights_it_evaluated_with_their_step(run: Path, monkeypatch) -> None:
    real = RunDir.load_checkpoint

    def then_training_moves_on(self, path=None):
        ckpt = real(self, path)
        add_checkpoint(run, 90)
        return ckpt

    monkeypatch.setattr(RunDir, "load_checkpoint", then_training_moves_on)
    result = api.evaluate(run, num=4, steps=2)
    assert result["step"] == 4
    assert json.loads((run / "metrics.json").read_text())["step"] == 4


def test_a_checkpoint_pruned_while_read_is_not_corrupt(run: Path, monkeypatch, capsys) -> None:
    real = checkpoint.load

    def pruned_first(path: Path):
        if path.name == "step_0000004" and path.is_dir():
            add_checkpoint(run, 6)  # the training writes step 6 and prunes step 4
            shutil.rmtree(path)
        return real(path)

    monkeypatch.setattr(checkpoint, "load", pruned_first)
    capsys.readouterr()
    assert RunDir.open(run).load_checkpoint().path.name == "step_0000006"
    assert "unreadable" not in capsys.readouterr().err


def test_affinity_over_all_checkpoints_skips_one_pruned_meanwhile(
    run: Path, monkeypatch, capsys
) -> None:
    real = checkpoint.load

    def pruned(path: Path):
        if path.name == "step_0000002":
            shutil.rmtree(path, ignore_errors=True)
        return real(path)

    monkeypatch.setattr(checkpoint, "load", pruned)
    capsys.readouterr()
    assert main(["affinity", "--run", str(run), "--checkpoints", "all", *AFFINITY]) == 0
    assert "step_0000002 was removed while it was read" in capsys.readouterr().err
    assert json.loads((run / "affinity" / "affinity.json").read_text())["steps"] == [4]


# ------------------------------------------------------------------ 10. outside the loop
SLOW_SAMPLING = """
import os, sys, time
import antdiff.api as api
def slow(*a, **k):
    open(os.environ["MARK"], "w").close()
    time.sleep(120)
api.generate_data = slow
from antdiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_during_the_final_samples_is_one_line(tmp_path: Path) -> None:
    run, mark = tmp_path / "r", tmp_path / "sampling"
    argv = ["train", *TOY, "--steps", "3", "--out", str(run)]
    cmd = [sys.executable, "-c", SLOW_SAMPLING, *argv]
    proc = subprocess.Popen(cmd, env={**ENV, "MARK": str(mark)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not mark.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert mark.exists(), proc.stderr.read() if proc.poll() is not None else "no sampling"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and "training is complete and saved" in err, err
    assert checkpoint.step_of(checkpoint.latest(run)) == 3
    assert not (run / "samples.png").exists()


def test_a_full_disk_while_drawing_the_final_samples_leaves_no_partial_png(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    real = Figure.savefig

    def full(self, fname, *args, **kwargs):
        if not isinstance(fname, str | os.PathLike):  # the report's in-memory figures
            return real(self, fname, *args, **kwargs)
        Path(fname).write_bytes(b"\x89PNG")
        no_space()

    monkeypatch.setattr(Figure, "savefig", full)
    run = tmp_path / "r"
    capsys.readouterr()
    assert main(["train", *TOY, "--steps", "2", "--out", str(run)]) == 2
    assert "No space left" in one_line(capsys)
    assert checkpoint.step_of(checkpoint.latest(run)) == 2
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [".lock", "checkpoints", "config.json", "metrics.jsonl", "run.json"]
    )


def test_a_full_disk_during_an_export_leaves_no_partial_export(
    run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(export, "_readme", no_space)  # after the weights were written
    out = tmp_path / "e"
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert "No space left" in one_line(capsys)
    assert sorted(tmp_path.iterdir()) == [run]


def test_a_full_disk_during_affinity_leaves_no_partial_file(run: Path, monkeypatch, capsys) -> None:
    def partial(file, *args, **kwargs):
        file.write(b"PK\x03\x04 cut short")
        no_space()

    monkeypatch.setattr(np, "savez", partial)
    capsys.readouterr()
    assert main(["affinity", "--run", str(run), *AFFINITY]) == 2
    assert "No space left" in one_line(capsys)
    assert list((run / "affinity").iterdir()) == []

"""Faults against real processes: SIGKILL inside a checkpoint write, SIGINT and SIGTERM, a full
disk, a truncated checkpoint, a second process on the same run, a diverging run. In each, nothing
already saved is lost and the run continues exactly where it can."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from antdiff import build, checkpoint
from antdiff.cli import main
from antdiff.rundir import RunDir

pytestmark = pytest.mark.slow

TOY = [
    "--dataset",
    "toy:gaussians8",
    "--model",
    "mlp",
    "--model-options",
    '{"hidden": 32, "depth": 2}',
    "--batch-size",
    "64",
    "--num-samples",
    "8",
    "--sample-steps",
    "4",
    "--timesteps",
    "100",
    "--method",
    "uw",
]
DIGITS = [
    "--dataset",
    "digits",
    "--batch-size",
    "16",
    "--num-samples",
    "4",
    "--sample-steps",
    "2",
    "--method",
    "vanilla",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The CLI with checkpoint writes slowed down, so that a signal can land inside one.
SLOW_WRITES = """
import sys, time
import antdiff.checkpoint as c
real = c.save_file
def slow(*a, **k):
    time.sleep(0.4)
    return real(*a, **k)
c.save_file = slow
from antdiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


def weights(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(checkpoint.latest(run) / name)


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = weights(a, name), weights(b, name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def start(argv: list[str], slow: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SLOW_WRITES] if slow else [sys.executable, "-m", "antdiff"]
    return subprocess.Popen(
        [*cmd, "train", *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_inside_a_checkpoint_write_resumes_exactly(tmp_path: Path) -> None:
    flags = [*TOY, "--steps", "40", "--checkpoint-every", "4", "--keep-checkpoints", "1"]
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    proc = start([*flags, "--out", str(cut)], slow=True)

    def writing_the_second() -> bool:  # a complete checkpoint, and a write under way
        done = checkpoint.latest(cut, missing_ok=True) is not None
        return done and any(cut.glob("checkpoints/.tmp-*"))

    wait_for(writing_the_second, proc, "a second checkpoint write")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(cut) is not None  # the previous checkpoint survived
    assert main(["train", "--resume", "--out", str(cut)]) == 0
    assert_same_weights(tmp_path / "whole", cut)
    assert not list(cut.glob("checkpoints/.tmp-*"))


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_saves_a_checkpoint_and_resume_is_exact(tmp_path: Path, sig: int) -> None:
    flags = [*TOY, "--log-every", "1", "--checkpoint-every", "100000"]
    cut = tmp_path / "cut"
    proc = start([*flags, "--steps", "100000", "--out", str(cut)])
    wait_for(lambda: logged_steps(cut) >= 20, proc, "20 logged steps")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert len(err.strip().splitlines()) == 1 and "checkpoint saved" in err, err
    step = checkpoint.step_of(checkpoint.latest(cut))
    assert f"at step {step};" in err and step >= 20
    steps = str(step + 30)
    assert main(["train", "--resume", "--out", str(cut), "--steps", steps]) == 0
    assert main(["train", *flags, "--steps", steps, "--out", str(tmp_path / "whole")]) == 0
    assert_same_weights(tmp_path / "whole", cut)


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    run = tmp_path / "r"
    proc = start([*TOY, "--log-every", "1", "--steps", "100000", "--out", str(run)], slow=True)
    wait_for(lambda: logged_steps(run) >= 5, proc, "5 logged steps")
    proc.send_signal(signal.SIGINT)  # stop after this step, saving a checkpoint (slowly) ...
    wait_for(lambda: any(run.glob("checkpoints/.tmp-*")), proc, "the checkpoint write")
    proc.send_signal(signal.SIGINT)  # ... no: stop now
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert checkpoint.latest(run, missing_ok=True) is None  # the write was abandoned


def test_a_second_process_is_refused_until_the_first_is_gone(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    flags = [*DIGITS, "--steps", "100000", "--checkpoint-every", "3"]
    proc = start([*flags, "--out", str(run)])
    wait_for(lambda: checkpoint.latest(run, missing_ok=True) is not None, proc, "a checkpoint")
    for argv in (["--resume", "--out", str(run)], [*flags, "--out", str(run)]):
        assert main(["train", *argv]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {proc.pid}" in err and len(err.strip().splitlines()) == 1
    proc.send_signal(signal.SIGKILL)  # its lock dies with it
    proc.wait()
    step = checkpoint.step_of(checkpoint.latest(run))
    assert main(["train", "--resume", "--out", str(run), "--steps", str(step + 2)]) == 0


def test_a_diverging_run_keeps_its_last_finite_checkpoint(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    argv = [
        *DIGITS,
        "--steps",
        "150",
        "--lr",
        "1.5",
        "--checkpoint-every",
        "5",
        "--keep-checkpoints",
        "1",
        "--out",
        str(run),
    ]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not finite" in err and "the last good checkpoint is" in err
    kept = RunDir.open(run)
    ckpt = kept.load_checkpoint()
    assert all(torch.isfinite(v).all() for v in (*ckpt.weights.values(), *ckpt.ema.values()))
    model = build.trained_model(kept, ckpt, ema=False)  # its loss on a batch is finite
    x = build.load_data(kept.cfg)[0].x[:32]
    t = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(0))
    alphas = build.schedule(kept.cfg).alphas_cumprod.float()
    from antdiff.diffusion import per_sample_loss

    with torch.no_grad():
        assert torch.isfinite(per_sample_loss(model, x, t, torch.randn_like(x), alphas)).all()
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--num",
                "4",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    steps = str(ckpt.step + 5)
    assert main(["train", "--resume", "--out", str(run), "--lr", "1e-3", "--steps", steps]) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3


@pytest.mark.parametrize("broken", ["model.safetensors", "state.pt"])
def test_a_truncated_latest_checkpoint_falls_back(tmp_path: Path, broken: str, capsys) -> None:
    flags = [*TOY, "--checkpoint-every", "3", "--keep-checkpoints", "3"]
    run = tmp_path / "r"
    assert main(["train", *flags, "--steps", "9", "--out", str(run)]) == 0
    latest = checkpoint.latest(run)
    data = (latest / broken).read_bytes()
    (latest / broken).write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--num", "4", "--out", str(tmp_path / "s.npz")]) == 0
    err = capsys.readouterr().err
    assert "step_0000009 is unreadable" in err and "using an older one" in err
    assert "weights_only" not in err
    assert main(["train", "--resume", "--out", str(run), "--steps", "12"]) == 0
    assert (run / "checkpoints" / "unreadable-step_0000009").is_dir()
    assert main(["train", *flags, "--steps", "12", "--out", str(tmp_path / "whole")]) == 0
    assert_same_weights(tmp_path / "whole", run)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 12 MiB tmpfs where the machine allows mounting one (as CI here does), else None."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    yield mnt if ok else None
    if ok:
        assert subprocess.run(["umount", str(mnt)]).returncode == 0  # nothing left open there


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, small_disk: Path | None, monkeypatch, capsys
) -> None:
    if small_disk is None:  # no tmpfs here: the writers fail as they do on a full disk
        calls = {"n": 0}
        real = checkpoint.save_file

        def full(*a, **k):
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("Error while serializing: IoError(No space left on device)")
            return real(*a, **k)

        monkeypatch.setattr(checkpoint, "save_file", full)
    disk = small_disk or tmp_path
    run = disk / "r"  # unet-tiny: one checkpoint (weights, EMA, Adam state) takes about 8 MiB
    argv = ["train", *DIGITS, "--steps", "4", "--checkpoint-every", "2", "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write checkpoint at step 4" in err[0], err
    assert "step_0000002 stays valid" in err[0]
    assert checkpoint.step_of(checkpoint.latest(run)) == 2
    assert not list(run.glob("checkpoints/.tmp-*"))  # the partial write is gone
    json.loads((run / "config.json").read_text())  # whole
    if small_disk is None:
        return
    with open(small_disk / "filler", "ab") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    fresh = small_disk / "fresh"
    assert main(["train", *DIGITS, "--steps", "2", "--out", str(fresh)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not (fresh / "config.json").exists()  # never a 0-byte config
    assert main(["sample", "--run", str(fresh), "--out", str(tmp_path / "s.npz")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_read_only_places_are_one_line_each(tmp_path: Path, capsys) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (as root, chmod does not bind)")
    try:
        run = mnt / "run"
        assert main(["train", *TOY, "--steps", "2", "--out", str(run)]) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for argv in (
            ["train", *TOY, "--steps", "2", "--out", str(mnt / "new")],
            ["train", "--resume", "--out", str(run), "--steps", "4"],
            ["sample", "--run", str(run), "--num", "2", "--out", str(mnt / "s.npz")],
            ["evaluate", "--run", str(run), "--num", "16", "--steps", "2"],
            ["export", "--run", str(run), "--out", str(mnt / "e")],
            ["affinity", "--run", str(run), "--bins", "4", "--probe", "8"],
        ):
            capsys.readouterr()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "Read-only file system" in err[0], (argv, err)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_interrupted_survives_a_process_boundary() -> None:
    """A benchmark worker (multiprocessing) sends the exception back pickled: message and exit
    status must both arrive."""
    import pickle

    from antdiff.errors import Interrupted

    err = pickle.loads(pickle.dumps(Interrupted("stopped at step 7", 143)))
    assert (str(err), err.code) == ("stopped at step 7", 143)

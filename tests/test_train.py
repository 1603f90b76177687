"""The training system end to end on digits: every method, resume after SIGKILL, bad input."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from antdiff import checkpoint as ckpt_mod
from antdiff.api import train
from antdiff.cli import main
from antdiff.config import make_config
from antdiff.errors import AntError
from antdiff.train import Trainer
from runs import NO_ATTENTION, assert_same_weights, final_weights, train_two_processes

FAST = {
    "dataset": "digits",
    "batch_size": 16,
    "num_samples": 4,
    "sample_steps": 2,
    "log_every": 5,
    "checkpoint_every": 10,
}


def run(tmp_path: Path, name: str, **over) -> Path:
    return train(make_config({**FAST, "out": str(tmp_path / name), **over})).path


def test_uw_run_writes_the_run_directory(tmp_path) -> None:
    out = tmp_path / "uw"
    argv = [
        "train",
        "--dataset",
        "digits",
        "--method",
        "uw",
        "--clusters",
        "timestep:5",
        "--steps",
        "30",
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--num-samples",
        "4",
        "--sample-steps",
        "2",
        "--log-every",
        "10",
    ]
    assert main(argv) == 0
    for name in ("config.json", "run.json", "metrics.jsonl", "samples.png", "report.html"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert all(len(r["task_losses"]) == 5 and len(r["task_weights"]) == 5 for r in rows)
    assert rows[-1]["task_weights"] != rows[0]["task_weights"]  # UW's weights move
    last = ckpt_mod.latest(out)
    assert last.name == "step_0000030"
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt"}
    assert "Per-task loss" in (out / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vanilla", "min-snr", "p2", "famo", "pcgrad", "nash"])
def test_every_method_trains(tmp_path, method: str) -> None:
    out = run(tmp_path, method, method=method, steps=30)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and all(r["finite"] for r in rows)
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())


@pytest.mark.slow
def test_famo_same_batch_updates_its_logits_after_each_step(tmp_path) -> None:
    cfg = make_config(
        {
            **FAST,
            "out": str(tmp_path / "famo"),
            "method": "famo",
            "steps": 3,
            "method_options": {"same_batch": True},
        }
    )
    trainer = Trainer.start(cfg)
    seen = []
    observe = trainer.parts.method.observe
    trainer.parts.method.observe = lambda losses, present: (
        seen.append(losses) or observe(losses, present)
    )
    rows = [trainer.train_step() for _ in range(3)]
    assert len(seen) == 3 and trainer.parts.method.logits.abs().sum() > 0
    # each observed loss is the step's own batch after its update: on average below the step's
    assert sum(float(a.mean()) for a in seen) < sum(sum(r["task_losses"]) / 5 for r in rows)


def _kill_midway(cmd: list[str], run_dir: Path, rng: random.Random) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while ckpt_mod.latest(run_dir, missing_ok=True) is None:
        assert proc.poll() is None and time.time() < deadline, "training ended before a checkpoint"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("sampling", ["stratified", "loss-aware"])
def test_the_timestep_sampler_hears_after_every_step(tmp_path, sampling: str) -> None:
    over = {"out": str(tmp_path / sampling), "steps": 2, "timestep_sampling": sampling}
    cfg = make_config({**FAST, **over})
    heard = []
    with Trainer.start(cfg) as trainer:
        sampler = trainer.parts.timestep_sampler
        after_step = sampler.after_step

        def spy(t: torch.Tensor, losses: torch.Tensor | None, weights: torch.Tensor) -> None:
            heard.append((t, losses, weights))
            after_step(t, losses, weights)

        sampler.after_step = spy
        rows = [trainer.train_step() for _ in range(2)]
    assert len(heard) == 2
    for (t, losses, weights), row in zip(heard, rows, strict=True):
        assert t.shape == (FAST["batch_size"],)
        assert (losses is None) == (sampling == "stratified")  # gathered only when needed
        assert losses is None or (losses.shape == t.shape and torch.isfinite(losses).all())
        assert weights.shape == (5,)
        assert weights.tolist() == pytest.approx(row["task_weights"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uw", "pcgrad"])
def test_resume_after_sigkill_is_bit_exact(tmp_path, method: str) -> None:
    steps = 40
    over = {"method": method, "steps": steps, "checkpoint_every": 3, "keep_checkpoints": 1}
    whole = run(tmp_path, "whole", **over)
    cut = tmp_path / "cut"
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in {**FAST, **over, "out": cut}.items()]
    seed = random.randrange(10**6)
    _kill_midway([sys.executable, "-m", "antdiff", "train", *argv], cut, random.Random(seed))
    assert main(["train", *argv, "--resume"]) == 0, f"kill seed {seed}"
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a), f"resume differs (kill seed {seed})"
    ema_a = load_file(ckpt_mod.latest(whole) / "ema.safetensors")
    ema_b = load_file(ckpt_mod.latest(cut) / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    steps_logged = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged))  # no duplicate lines after the resume


def test_resume_rejects_an_incompatible_config(tmp_path) -> None:
    run(tmp_path, "r", steps=10)
    with pytest.raises(AntError, match=r"another config .*ema_decay"):
        train(
            make_config({**FAST, "out": str(tmp_path / "r"), "steps": 20, "ema_decay": 0.5}),
            resume=True,
        )
    with pytest.raises(AntError, match="already holds a run"):
        run(tmp_path, "r", steps=10)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"batch_size": 3}, "smaller than the number of tasks"),
        ({"method": "bogus"}, "unknown method"),
        ({"clusters": "median:5"}, "bad cluster spec"),
        ({"clusters": "timestep:x"}, "K must be an integer"),
        ({"dataset": "folder:/nonexistent/dir"}, "not found|does not exist|no such"),
        ({"dataset": "toy:swissroll", "conditional": True}, "needs labels"),
        ({"precision": "fp16"}, "needs a GPU"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, over, message) -> None:
    with pytest.raises(AntError, match=message):
        run(tmp_path, "bad", steps=2, **over)


def test_bad_input_from_the_cli_exits_2(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for flags in (["--dataset", f"folder:{empty}"], ["--method", "nope"], ["--batch-size", "2"]):
        assert main(["train", "--steps", "1", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("antdiff train: error:"), err


def test_dry_run_prints_resolved_config(tmp_path, capsys) -> None:
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"steps": 77, "lr": 0.01}))
    assert (
        main(
            [
                "train",
                "--preset",
                "demo",
                "--config",
                str(cfg_file),
                "--lr",
                "0.02",
                "--method",
                "min-snr",
                "--dry-run",
            ]
        )
        == 0
    )
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["steps"] == 77 and cfg["lr"] == 0.02  # file over preset, flag over file
    assert cfg["method"] == "mean" and cfg["weighting"] == "min-snr"


def test_sample_and_export(tmp_path) -> None:
    from diffusers import DDPMPipeline

    out = run(tmp_path, "s", method="vanilla", steps=4)
    assert (
        main(
            [
                "sample",
                "--run",
                str(out),
                "--num",
                "6",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 0
    )
    data = np.load(tmp_path / "x.npz")
    assert (tmp_path / "x.png").is_file() and len(data[data.files[0]]) == 6
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "pipe")]) == 0
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path) -> None:
    for method in ("uw", "pcgrad"):
        flags = {
            **FAST,
            "method": method,
            "steps": 6,
            "batch_size": 15,
            "checkpoint_every": 6,
            "num_samples": 2,
            "model_options": NO_ATTENTION,
        }
        argv = [
            f"--{k.replace('_', '-')}={json.dumps(v) if isinstance(v, dict) else v}"
            for k, v in flags.items()
        ]
        one = run(tmp_path, f"one-{method}", **{**flags})
        train_two_processes(argv, tmp_path / f"two-{method}")
        assert_same_weights(one, tmp_path / f"two-{method}")


@pytest.mark.slow
def test_evaluate_json_and_eval_every(tmp_path, capsys) -> None:
    out = run(tmp_path, "ev", method="uw", steps=4, eval_every=2, eval_num=130)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and "fd" in evals[0]["eval"]
    assert "Evaluation over training" in (out / "report.html").read_text()
    argv = ["evaluate", "--run", str(out), "--num", "130", "--steps", "2", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"fd", "precision", "recall", "num_samples", "fd_halves", "fd_noise"} <= result.keys()
    assert result["num_samples"] == 130
    intervals = result["heldout"]["intervals"]
    assert [iv["interval"] for iv in intervals] == [
        [0, 199],
        [200, 399],
        [400, 599],
        [600, 799],
        [800, 999],
    ]
    assert all(iv["mean"] > 0 for iv in intervals)
    assert json.loads((out / "metrics.json").read_text())["fd"] == result["fd"]
    assert main(argv) == 0  # same seed -> same numbers
    assert json.loads(capsys.readouterr().out)["fd"] == result["fd"]


def test_conditional_training_samples_with_guidance(tmp_path) -> None:
    out = run(tmp_path, "cond", conditional=True, steps=4, guidance=2.0)
    assert json.loads((out / "run.json").read_text())["num_classes"] == 10
    assert (
        main(
            [
                "sample",
                "--run",
                str(out),
                "--num",
                "10",
                "--steps",
                "2",
                "--guidance",
                "3",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "c.png").is_file()


def test_dit_model_trains(tmp_path) -> None:
    out = run(tmp_path, "dit", model="dit-tiny", method="pcgrad", steps=3)
    assert all(torch.isfinite(v).all() for v in final_weights(out).values())


@pytest.mark.slow
def test_latent_training_decodes_samples(tmp_path, tiny_vae) -> None:
    out = run(tmp_path, "ldm", vae=tiny_vae, steps=3, num_samples=4)
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "latent" and meta["shape"] == [4, 4, 4]
    from antdiff.api import sample

    x = np.load(sample(out, 3, tmp_path / "l.npz", steps=2))["samples"]
    assert x.shape == (3, 1, 8, 8)  # decoded back to pixels


@pytest.mark.slow
def test_evaluate_bad_input(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--run", str(tmp_path / "empty")]) == 2  # not a run directory
    out = run(tmp_path, "r", method="vanilla", steps=2)
    assert main(["evaluate", "--run", str(out), "--num", "20", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "ill-posed" in err and len(err.strip().splitlines()) == 2

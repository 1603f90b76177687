"""Bad input and faults: one line on stderr, exit 2 (130/143 for signals), nothing lost.

The bad inputs run through the CLI in-process against an existing run directory, which must not
change; the faults (SIGKILL inside a checkpoint write, SIGINT/SIGTERM, a full disk, a truncated
checkpoint, a second process, a diverging run) run real processes. docs/reliability.md maps each
fault class to the test here that shows it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from antdiff.cli import main

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
    "--log-every",
    "1",
]
CLI = [sys.executable, "-m", "antdiff"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_odd_files(d: Path) -> None:
    """The odd files and folders the bad inputs point at, in `d` (also used by
    benchmarks/fuzz.py)."""
    (d / "empty").mkdir()
    (d / "folder").mkdir()
    (d / "a_file").write_text("x")
    (d / "half").mkdir()
    (d / "half" / "metrics.jsonl").write_text('{"step": 1}\n')
    np.savez(d / "zero.npz", x=np.zeros((0, 8, 8), np.uint8))
    (d / "garbage.npy").write_bytes(b"\x80\x04 this is not an array")
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "complex.npy", np.eye(3) * (1 + 1j))
    np.save(d / "a5.npy", np.eye(5))
    np.savez(d / "noaff.npz", x=np.eye(4))
    for name, text in {
        "steps.json": '{"steps": "five"}',
        "bad.json": "{steps: 5",
        "cfg.yaml": "steps: 5",
        "clusters.toml": "clusters = 5",
        "lr.toml": 'lr = "0.001"',
        "batch.json": '{"batch_size": 16.5}',
        "cond.json": '{"conditional": "false"}',
        "key.json": '{"stepz": 5}',
        "list.json": "[1, 2]",
    }.items():
        (d / name).write_text(text)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished toy run R and the odd files the bad inputs point at."""
    d = tmp_path_factory.mktemp("bad")
    run = d / "R"
    assert main(["train", *TOY, "--steps", "4", "--checkpoint-every", "2", "--out", str(run)]) == 0
    write_odd_files(d)
    return {"dir": d, "run": run}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` with a hash of its bytes (the lock file's holder aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


NEW = "--out={D}/new"
BAD_INPUTS = [
    # train: values and their types
    ("train --steps five", "invalid int value"),
    ("train --steps 0", "steps must be >= 1"),
    ("train --batch-size 0", "batch size must be >= 1"),
    ("train --lr -1e-3", "--flag=VALUE"),
    ("train --lr=-0.001", "lr must be > 0"),
    ("train --lr inf", "must be finite"),
    ("train --lr nan", "must be finite"),
    ("train --weight-decay nan", "must be finite"),
    ("train --weight-decay -1", "weight_decay must be >= 0"),
    ("train --ema-decay 1.5", "ema_decay must be in"),
    ("train --label-dropout 1", "label_dropout must be in"),
    ("train --seed -1", "seed must be >= 0"),
    ("train --timesteps 0", "timesteps must be >= 1"),
    ("train --timesteps 200000", "T x T"),
    ("train --timesteps 10", "sample_steps (50) must be <= timesteps (10)"),
    ("train --sample-steps 0", "sample_steps must be >= 1"),
    ("train --num-samples -1", "num_samples must be >= 1"),
    ("train --eval-num 1", "eval_num >= 2"),
    ("train --resolution 0", "resolution must be >= 1"),
    ("train --holdout -5", "holdout must be >= 0"),
    ("train --guidance nan", "guidance must be a finite number"),
    # train: names
    ("train --clusters median:5", "bad cluster spec"),
    ("train --clusters timestep:x", "K must be an integer"),
    ("train --clusters timestep:0", "K must be >= 1"),
    ("train --clusters affinity:5", "needs its matrix"),
    ("train --clusters affinity:5:{D}/missing.npy", "affinity file not found"),
    ("train --clusters timestep:2000", "K must be <= timesteps"),
    ("train --clusters affinity:5:auto --affinity-bins 4", "needs K <= affinity_bins (4)"),
    ("train --clusters affinity:5:auto --steps 10 --affinity-warmup 10", "shorter than the run"),
    ("train --clusters affinity:5:auto --affinity-probe 100000", "more than the 1497 training"),
    ("train --clusters affinity:5:auto --affinity-snapshots 0", "affinity_snapshots must be"),
    ("train --method bogus", "unknown method 'bogus'; choose from vanilla, min-snr, p2"),
    ("train --method edm2 --precision fp16", "edm2 weighting trains in fp32 or bf16"),
    ("train --method vanilla --timestep-sampling stratified", "means --timestep-sampling"),
    ("train --method min-snr --weighting p2", "means --weighting min-snr"),
    ("train --method-options [1]", "must be a JSON object"),
    ("train --method-options notjson", "must be a JSON object"),
    ("""train --method uw --method-options {"lr":"fast"}""", "method 'uw': lr must be a number"),
    ("""train --method-options {"nope":1}""", "unknown option(s) nope"),
    ("train --model bogus", "unknown model 'bogus'"),
    ("""train --model-options {"block_out_channels":5}""", "cannot build unet-tiny"),
    ("train --weighting bogus", "unknown loss weighting"),
    ("train --weighting min-snr:0", "gamma must be a number in (0, 10000]"),
    ("train --weighting p2:k=abc", "must be a number"),
    ("train --prediction x0", "unknown prediction 'x0'"),
    ("train --schedule bogus", "unknown schedule"),
    ("train --timestep-sampling bogus", "unknown timestep sampling"),
    ("train --timestep-sampling logit-normal:0,-1", "std must be a number in (0, 10]"),
    ("train --timestep-sampling logit-normal:a", "mean must be a number in [-10, 10]"),
    ("train --timestep-sampling mode:5", "scale must be a number in [-1, 1.75]"),
    ("train --timestep-sampling loss-aware:0", "history must be an integer in [1, 10000]"),
    ("train --timestep-sampling uniform:3", "takes no parameters"),
    ("train --method mean --timestep-sampling mode", "undoes the weight"),
    ("train --weighting edm2:lr=-1", "edm2: lr must be a number in [0, 1]"),
    ("train --weighting debiased:max_snr=0", "max_snr must be a number in [0.001, 1000000]"),
    ("train --method pcgrad --weighting edm2", "trains with loss-based methods, not pcgrad"),
    ("train --sampler foo", "unknown sampler 'foo'"),
    ("train --precision fp64", "unknown precision"),
    ("train --precision fp16 --device cpu", "needs a GPU"),
    ("train --timestep-range 5:2", "timestep_range 5:2 must satisfy"),
    ("train --timestep-range abc", "timestep_range must be L:R"),
    ("train --batch-size 3", "smaller than the number of tasks"),
    # train: degenerate option values (declared ranges, antdiff.options)
    ("train --weighting p2:gamma=1e308", "weighting p2: gamma must be a number in (0, 10]"),
    ("train --timestep-sampling logit-normal:0,inf", "std must be a number in (0, 10]"),
    ("train --timestep-sampling logit-normal:1e308,1", "mean must be a number in [-10, 10]"),
    ("train --weighting edm2:lr=inf", "edm2: lr must be a number in [0, 1]"),
    ("train --weighting debiased:max_snr=1e-300", "max_snr must be a number in [0.001"),
    ("train --objective flow --flow-shift 1e-300", "flow_shift must be a number in [0.01, 100]"),
    ("train --timestep-sampling loss-aware:1.5", "history must be an integer in [1, 10000]"),
    ("train --timestep-sampling loss-aware:nan", "history must be an integer in [1, 10000]"),
    ("train --weighting min-snr:gamma=5,gamma=1", "weighting min-snr: gamma is given twice"),
    ("train --timestep-sampling logit-normal:mean=0,mean=1", "mean is given twice"),
    ("train --timestep-sampling mode:1,2", "mode takes at most 1 parameter(s)"),
    ("""train --method nash --method-options {"update_every":2.5}""", "must be an integer"),
    ("""train --method famo --method-options {"lr":1e308}""", "lr must be a number in (0, 1]"),
    # train: data
    ("train --dataset imagenet", "unknown data spec"),
    ("train --dataset folder:{D}/nonexistent", "data folder not found"),
    ("train --dataset folder:{D}/empty", "no images"),
    ("train --dataset npz:{D}/zero.npz", "holds no samples"),
    ("train --dataset npz:{D}/garbage.npy", "cannot read npz"),
    ("train --dataset toy:swissroll --conditional", "needs labels"),
    ("train --resolution 100000", "out of memory"),
    # train: config files and presets
    ("train --config {D}/missing.json", "config file not found"),
    ("train --config {D}/cfg.yaml", "must be JSON (.json) or TOML (.toml)"),
    ("train --config {D}/bad.json", "cannot parse config file"),
    ("train --config {D}/list.json", "one object of settings"),
    ("train --config {D}/steps.json", "steps must be int, got 'five'"),
    ("train --config {D}/clusters.toml", "clusters must be str, got 5"),
    ("train --config {D}/lr.toml", "lr must be float, got '0.001'"),
    ("train --config {D}/batch.json", "batch-size must be int, got 16.5"),
    ("train --config {D}/cond.json", "conditional must be bool, got 'false'"),
    ("train --config {D}/key.json", "unknown config key(s): stepz"),
    ("train --preset mnist", "--preset mnist needs --dataset mnist:PATH"),
    # train: the run directory
    ("train --out={R}", "already holds a run"),
    ("train --resume --out={R} --ema-decay 0.5", "another config (ema_decay"),
    ("train --resume --out={R} --clusters log-snr:5", "another config (clusters"),
    ("train --resume --out={R} --steps 1", "at step 4: --steps must be >= that"),
    ("train --resume", "--resume needs --out"),
    ("train --resume --out={D}/nonexistent", "not a run directory"),
    ("train --out={D}/a_file", "is a file, not a folder"),
    ("train --out={D}/half", "already holds a run (metrics.jsonl)"),
    ("train --out={D}/a_file/sub", "cannot write"),
    # sample
    ("sample --run {D}/nonexistent --out {D}/s.npz", "not a run directory"),
    ("sample --run {D}/empty --out {D}/s.npz", "not a run directory"),
    ("sample --run {R} --num 0 --out {D}/s.npz", "--num must be >= 1"),
    ("sample --run {R} --steps -3 --out {D}/s.npz", "sampling steps must be in 1..100"),
    ("sample --run {R} --steps 5000 --out {D}/s.npz", "sampling steps must be in 1..100"),
    ("sample --run {R} --guidance nan --out {D}/s.npz", "guidance scale must be a finite"),
    ("sample --run {R} --sampler foo --out {D}/s.npz", "invalid choice"),
    ("sample --run {R} --out {D}/folder", "is a folder"),
    ("sample --run {R} --out {D}/a_file/s.npz", "cannot write"),
    ("sample --run {R} --device cuda --out {D}/s.npz", "no CUDA device"),
    # evaluate
    ("evaluate --run {D}/nonexistent", "not a run directory"),
    ("evaluate --run {R} --num 1", "must be >= 2"),
    ("evaluate --run {R} --steps 0", "sampling steps must be in"),
    ("evaluate --run {R} --fid", "the standard FID needs images"),
    # export
    ("export --run {D}/nonexistent --out {D}/e", "not a run directory"),
    ("export --run {R} --out {D}/a_file", "File exists|is a file|cannot write"),
    # cluster
    ("cluster -k 0", "k must be in"),
    ("cluster --timesteps 200000", "T x T"),
    ("cluster --cost affinity", "needs an affinity matrix"),
    ("cluster --cost affinity --affinity {D}/strings.npy", "must hold real numbers"),
    ("cluster --cost affinity --affinity {D}/complex.npy", "must hold real numbers"),
    ("cluster --cost affinity --affinity {D}/garbage.npy", "not a .npy or .npz array file"),
    ("cluster --cost affinity --affinity {D}/missing.npy", "affinity file not found"),
    ("cluster --cost timestep --affinity {D}/complex.npy", "must hold real numbers"),
    # affinity
    ("affinity --run {R} --bins 1", "--bins must be in 2..100"),
    ("affinity --run {R} --probe 100000", "--probe must be in"),
    ("affinity --run {R} --checkpoints last,3", "--checkpoints must be"),
    ("affinity --run {R} --checkpoints 3", "no checkpoint at step 3"),
    ("affinity --run {R} --sketch-dim -1", "--sketch-dim must be >= 0"),
    ("affinity --run {D}/nonexistent", "not a run directory"),
    # transfer
    ("transfer --seeds 0 --out {D}/t", "--seeds must be >= 1"),
    ("transfer --intervals 0:99,150:999 --out {D}/t", "not contiguous"),
    ("transfer --num-samples 50 --out {D}/t", "--num-samples must exceed 128"),
    ("transfer --budget bogus --out {D}/t", "invalid choice"),
    # checks that used to come late (after the warm-up, or not at all)
    ("train --clusters affinity:12:auto --batch-size 8", "smaller than the number of tasks K=12"),
    ("train --clusters affinity:6:{D}/a5.npy", "K must be <= the matrix's 5 bins"),
    ("train --affinity-warmup 3", "warm-up of --clusters affinity:K:auto only"),
    # values that reached torch
    ("train --seed 18446744073709551617", "seed must be at most 2**64 - 1"),
    ("""train --dataset toy:moons --model mlp --model-options {"hidden":-3}""", "build mlp"),
    ("sample --run {R} --seed 36893488147419103232 --out {D}/s.npz", "must be in 0..2**64 - 1"),
    # ignored or misread input, messages that blamed the wrong thing
    ("train --out=", "--out is empty"),
    ("train --dataset npz:", "names no path"),
    ("train --device xla", "unknown --device 'xla'"),
    ("sample --run {R} --device tpu --out {D}/s.npz", "unknown --device 'tpu'"),
    ("sample --run {R} --out {D}/s.jpeg", "not .jpeg"),
    ("export --run {R} --out {R}", "holds a training run (config.json)"),
    ("cluster --cost affinity --affinity {D}/noaff.npz", "has no 'affinity' array (found x)"),
    ("train --dataset=", "--dataset is empty"),
    ("train --dataset toy:", "names no data set"),
    ("train --model=", "unknown model ''"),
    ("train --vae=", "--vae is empty"),
    ("train --affinity-probe=-2", "affinity_probe and affinity_snapshots >= 1"),
    ("""train --dataset toy:rings --model mlp --model-options {"hidden":0}""", "hidden must be"),
]


@pytest.mark.parametrize(("command", "message"), BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_changes_nothing(files, command, message, capsys) -> None:
    d, run = files["dir"], files["run"]
    argv = command.replace("{D}", str(d)).replace("{R}", str(run)).split(" ")
    if argv[0] == "train" and not any(a.startswith(("--out", "--resume")) for a in argv):
        argv += [NEW.replace("{D}", str(d))]
    before = snapshot(run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors: what the process exits with
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert any(m in err for m in message.split("|")), err
    assert snapshot(run) == before
    assert not (d / "new").exists()  # no half-made run directory


def test_there_are_at_least_60_bad_inputs() -> None:
    assert len(BAD_INPUTS) >= 60


def test_train_help_describes_every_flag(capsys) -> None:
    from antdiff.config import FIELDS

    assert all(f.metadata.get("help") for f in FIELDS.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, f in FIELDS.items():
        assert " ".join(f.metadata["help"].split()[:3]) in out, name
    assert "(2% of steps)" in out and "%%" not in out  # a literal % shows as one

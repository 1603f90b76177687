"""The checkpoint format, written atomically: a new one is complete before it becomes `latest`.

Layout of `RUN/checkpoints/step_XXXXXXX/`: `model.safetensors` (raw weights), `ema.safetensors`
(EMA weights, same names, what sampling uses) and `state.pt` (optimizer, method, scaler, EMA
counters, RNG states, step, partition, config). A checkpoint is first written to a temporary
folder and renamed; `latest` is replaced by rename too, so a crash or a full disk at any moment
leaves the previous checkpoint valid. Only `rundir.RunDir` calls this module.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from antdiff.errors import AntError

WEIGHTS, EMA, STATE = "model.safetensors", "ema.safetensors", "state.pt"


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def save(
    run_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = folder(run_dir)
    name = f"step_{step:07d}"
    final, tmp = root / name, root / f".tmp-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(_contiguous(weights), tmp / WEIGHTS)
        save_file(_contiguous(ema), tmp / EMA)
        torch.save(state, tmp / STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest(run_dir, missing_ok=True)
        kept = f"; the previous checkpoint {prev} stays valid" if prev else ""
        raise AntError(
            f"could not write checkpoint at step {step} ({e.strerror or e}){kept}"
        ) from e
    _prune(root, keep)
    return final


def complete(run_dir: str | Path) -> list[Path]:
    """Every complete checkpoint folder, oldest first."""
    return sorted(p for p in folder(run_dir).glob("step_*") if _complete(p))


def latest(run_dir: str | Path, missing_ok: bool = False) -> Path | None:
    root = folder(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if _complete(path):
            return path
    candidates = complete(run_dir)
    if candidates:
        return candidates[-1]
    if missing_ok:
        return None
    raise AntError(f"no checkpoint in {root}")


def load(path: Path) -> tuple[dict, dict, dict]:
    """(weights, ema weights, state) of one checkpoint folder."""
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        return load_file(path / WEIGHTS), load_file(path / EMA), state
    except (OSError, RuntimeError) as e:
        raise AntError(f"cannot read checkpoint {path}: {e}".splitlines()[0]) from None


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (WEIGHTS, EMA, STATE))


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

"""The checkpoint format, written atomically: a new one is complete before it becomes `latest`.

Layout of `RUN/checkpoints/step_XXXXXXX/`: `model.safetensors` (raw weights), `ema.safetensors`
(EMA weights, same names, what sampling uses) and `state.pt` (optimizer, method, scaler, EMA
counters, RNG states, step, partition, config). A checkpoint is first written to a temporary
folder and renamed; `latest` is replaced by rename too, so a crash or a full disk at any moment
leaves the previous checkpoint valid. Only `rundir.RunDir` calls this module.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from antdiff.errors import AntError

WEIGHTS, EMA, STATE = "model.safetensors", "ema.safetensors", "state.pt"
# A checkpoint folder's name; anything else in checkpoints/ (a user's `step_20.bak` copy, the
# `unreadable-` folders set aside, temporary folders) is not a checkpoint.
NAME = re.compile(r"step_(\d+)")


class Vanished(AntError):
    """A checkpoint removed while it was read (a running training prunes old ones): not corrupt."""


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def folders(run_dir: str | Path) -> list[Path]:
    """Every folder named like a checkpoint (complete or not), oldest first."""
    root = folder(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if NAME.fullmatch(p.name) and p.is_dir())


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
    except Exception as e:  # OSError, torch's RuntimeError, SafetensorError: a full disk and kin
        shutil.rmtree(tmp, ignore_errors=True)
        (root / "latest.tmp").unlink(missing_ok=True)
        prev = latest(run_dir, missing_ok=True)
        kept = f"; the previous checkpoint {prev} stays valid" if prev else ""
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise AntError(f"could not write checkpoint at step {step} ({reason}){kept}") from None
    _prune(root, keep)
    return final


def complete(run_dir: str | Path) -> list[Path]:
    """Every complete checkpoint folder, oldest first."""
    return [p for p in folders(run_dir) if _complete(p)]


def latest(run_dir: str | Path, missing_ok: bool = False) -> Path | None:
    root = folder(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if NAME.fullmatch(name) and _complete(root / name):
            return root / name
    candidates = complete(run_dir)
    if candidates:
        return candidates[-1]
    if missing_ok:
        return None
    raise AntError(f"no checkpoint in {root}")


def load(path: Path) -> tuple[dict, dict, dict]:
    """(weights, ema weights, state) of one checkpoint folder, each file verified: the weights'
    safetensors header and data, the state through the safe `weights_only` unpickler."""
    bad = f"checkpoint {path} is unreadable (truncated or corrupt"
    gone = Vanished(f"checkpoint {path} was removed while it was read (pruned by a training?)")
    try:
        weights, ema = load_file(path / WEIGHTS), load_file(path / EMA)
    except FileNotFoundError:
        raise gone from None
    except Exception:  # SafetensorError, OSError: truncated or not safetensors at all
        raise AntError(f"{bad} weights)") from None
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise gone from None
    except Exception:  # UnpicklingError, EOFError, RuntimeError, ...
        raise AntError(f"{bad} {STATE})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise AntError(f"checkpoint {path} has a {STATE} without a training state")
    return weights, ema, state


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (WEIGHTS, EMA, STATE))


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints (the one just written among them)."""
    for old in [p for p in folders(root.parent) if _complete(p)][:-keep]:
        shutil.rmtree(old, ignore_errors=True)

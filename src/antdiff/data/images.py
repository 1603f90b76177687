"""Image data sets: scikit-learn's digits, image folders, .npz arrays and MNIST IDX files.

Images are float32 [N, C, H, W] scaled to [-1, 1] (DDPM convention, Ho et al. 2020).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from antdiff.data.base import Dataset
from antdiff.data.curate import curate
from antdiff.errors import AntError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (0..255), float in [0,1], float in 0..255 or float already in [-1,1] -> [-1,1]."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    a = images.astype(np.float32)
    if not np.isfinite(a).all():
        raise AntError("images contain NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if hi > 1.0 + 1e-6:  # 0..255 floats
        a = a / 127.5 - 1.0
    elif lo >= 0.0:  # [0, 1]
        a = a * 2.0 - 1.0
    return torch.from_numpy(a)


def resize(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Bilinear resize of [N,C,H,W] to resolution x resolution (antialiased when shrinking)."""
    if resolution is None or tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    shrink = resolution < min(x.shape[-2:])
    y = F.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink
    )
    return y.clamp(-1.0, 1.0)


def image_dataset(x: torch.Tensor, labels: np.ndarray | None, name: str, **meta: Any) -> Dataset:
    y = None
    num_classes = 0
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels).astype(np.int64).reshape(-1))
        if y.shape[0] != x.shape[0]:
            raise AntError(f"{name}: {y.shape[0]} labels for {x.shape[0]} images")
        if y.numel() and int(y.min()) < 0:
            raise AntError(f"{name}: labels must be >= 0")
        num_classes = int(y.max()) + 1 if y.numel() else 0
    return Dataset(x.contiguous().float(), y, num_classes, "image", name, dict(meta))


# ----------------------------------------------------------------------------- digits
def load_digits(resolution: int | None = None) -> Dataset:
    """scikit-learn's 1,797 digits (8x8, grey levels 0..16), labels 0..9."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    return image_dataset(resize(x, resolution), d.target, "digits")


def _list_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise AntError(f"data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AntError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {root}")
    return files


def _open_image(path: Path) -> Any:
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises many types for broken files
        raise AntError(f"cannot read image {path}: {exc}".splitlines()[0]) from exc
    return img


def _is_grey(img: Any) -> bool:
    return img.mode in {"1", "L", "LA", "I", "I;16", "F"}


def load_folder(path: str, resolution: int | None = None) -> Dataset:
    """All images under ``path`` (recursively); labels from top-level subfolder names.

    Greyscale if every file is greyscale, else RGB. With ``resolution`` each image is
    resized (shorter side) and center-cropped to a square; without it all sizes must match.
    """
    from PIL import Image, ImageOps

    root = Path(path).expanduser()
    files = _list_images(root)
    images = [_open_image(p) for p in files]
    mode = "L" if all(_is_grey(im) for im in images) else "RGB"
    arrays = []
    for p, im in zip(files, images, strict=True):
        im = im.convert(mode)
        if resolution is not None:
            im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
        if arrays[-1].shape != arrays[0].shape:
            (h0, w0), (h, w) = arrays[0].shape[:2], arrays[-1].shape[:2]
            raise AntError(
                f"images of mixed sizes: {files[0].relative_to(root)} is {w0}x{h0}, "
                f"{p.relative_to(root)} is {w}x{h}; pass a resolution to resize them"
            )
    x = to_unit_range(np.stack(arrays))
    x = x[:, None] if mode == "L" else x.permute(0, 3, 1, 2)
    labels, classes = _folder_labels(root, files)
    return image_dataset(x, labels, f"folder:{root}", class_names=classes)


def _folder_labels(root: Path, files: list[Path]) -> tuple[np.ndarray | None, list[str]]:
    """Class = first path component below root, when every image lies in one of >= 2 subfolders."""
    parts = [p.relative_to(root).parts for p in files]
    if any(len(pp) < 2 for pp in parts):
        return None, []
    classes = sorted({pp[0] for pp in parts})
    if len(classes) < 2:
        return None, []
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[pp[0]] for pp in parts]), classes


# ----------------------------------------------------------------------------- npz
def load_npz(path: str, resolution: int | None = None) -> Dataset:
    """Arrays ``x`` or ``images``: [N,H,W], [N,H,W,C] (C in 1,3,4), [N,C,H,W] or points [N,2];
    optional integer ``labels`` or ``y``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AntError(f"npz file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise AntError(f"cannot read npz {p}: {exc}".splitlines()[0]) from exc
    key = next((k for k in ("x", "images") if k in arrays), None)
    if key is None:
        raise AntError(f"npz {p} has no array 'x' or 'images' (found: {', '.join(arrays)})")
    a = arrays[key]
    if a.ndim < 2 or len(a) == 0:
        raise AntError(f"npz {p}: '{key}' holds no samples (shape {a.shape})")
    labels = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise AntError(f"npz {p}: labels must be integers, got {labels.dtype}")
    if a.ndim == 2 and a.shape[1] == 2 and a.dtype != np.uint8:
        return _points_from_array(a, labels, f"npz:{p}")
    return image_dataset(resize(_npz_images(a, p), resolution), labels, f"npz:{p}")


def _npz_images(a: np.ndarray, p: Path) -> torch.Tensor:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise AntError(f"npz {p}: images must be numeric, got {a.dtype}")
    if a.ndim == 3:
        return to_unit_range(a)[:, None]
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return to_unit_range(a[..., :3] if a.shape[-1] == 4 else a).permute(0, 3, 1, 2)
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return to_unit_range(a)
    raise AntError(f"npz {p}: images must be [N,H,W], [N,H,W,C] or [N,C,H,W], got {a.shape}")


def _points_from_array(a: np.ndarray, labels: np.ndarray | None, name: str) -> Dataset:
    x = torch.as_tensor(a, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise AntError(f"{name}: points contain NaN or infinite values")
    d = image_dataset(x, labels, name)
    return replace(d, kind="points")


# ----------------------------------------------------------------------------- MNIST / IDX
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not (detected by its magic bytes).

    Layout: 0x00 0x00, a dtype code, ndim, then ndim big-endian uint32 sizes, then the data.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise AntError(f"malformed gzip in IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise AntError(f"not an IDX file (bad magic number): {path}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise AntError(f"malformed IDX header in {path}")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise AntError(f"malformed IDX file {path}: {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, split: str, what: str) -> Path | None:
    stem = f"{split}-{what}"
    dim = 3 if what == "images" else 1
    for name in (f"{stem}-idx{dim}-ubyte", f"{stem}.idx{dim}-ubyte"):
        for suffix in ("", ".gz"):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    return None


def load_mnist(path: str, resolution: int | None = None, split: str = "train") -> Dataset:
    """MNIST-style IDX files in a directory (train-images-idx3-ubyte or train-images.idx3-ubyte,
    optionally .gz, with the matching labels file); ``split`` is "train" or "t10k". Exact
    duplicates are dropped and the held-out order is fixed by content (data/curate.py)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise AntError(f"MNIST folder not found: {root}")
    images_path = _find_idx(root, split, "images")
    if images_path is None:
        raise AntError(f"no {split}-images-idx3-ubyte (or .idx3-ubyte, .gz) in {root}")
    images = read_idx(images_path)
    if images.ndim != 3:
        raise AntError(f"malformed IDX images {images_path}: shape {images.shape}, want [N,H,W]")
    labels_path = _find_idx(root, split, "labels")
    labels = None if labels_path is None else read_idx(labels_path)
    if labels is not None and labels.shape != images.shape[:1]:
        raise AntError(f"{labels_path}: {labels.shape} labels for {images.shape[0]} images")
    images, labels, order, removed = curate(images, labels)
    x = resize(to_unit_range(images)[:, None], resolution)
    data = image_dataset(x, labels, f"mnist:{root}", duplicates_removed=removed)
    data.heldout_order = order
    return data

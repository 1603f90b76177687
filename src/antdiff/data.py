"""Datasets as in-memory tensors: embedded digits, 2-D toys, image folders, .npz, MNIST IDX.

Images are float32 [N, C, H, W] scaled to [-1, 1] (DDPM convention, Ho et al. 2020); 2-D toys
are float32 [N, 2] of roughly unit scale. With a VAE the images are encoded once into latents
z = (mean(E(x)) - shift) * scaling_factor (LDM, Rombach et al. 2022) and cached on disk.

Specs: ``digits``, ``toy:NAME``, ``folder:PATH``, ``npz:PATH``, ``mnist:DIR`` (a bare existing
directory means ``folder:``, a bare ``*.npz`` file means ``npz:``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from antdiff.errors import AntError

Kind = Literal["image", "points", "latent"]
TOYS = ("gaussians8", "checkerboard", "swissroll", "moons", "rings")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
DEFAULT_POINTS = 20000


@dataclass
class Dataset:
    """A whole data set in memory; ``labels`` index 0..num_classes-1 (None when unlabelled)."""

    x: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    kind: Kind
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    vae: str | None = None  # the VAE that made the latents (kind == "latent"), for decoding

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images and latents, (2,) for points."""
        return tuple(self.x.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def size(self) -> int:
        """Side length of square images/latents; 0 for points (what build_model expects)."""
        return 0 if self.kind == "points" else int(self.x.shape[-1])

    def subset(self, index: torch.Tensor) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return replace(self, x=self.x[index], labels=labels)

    def split(self, holdout: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Deterministic (train, held-out) split; held-out = a seeded random ``holdout`` samples."""
        train, held = split_indices(len(self), holdout, seed)
        return self.subset(train), self.subset(held)

    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Latents -> images in [-1, 1] through this data set's VAE; identity for other kinds."""
        if self.kind != "latent" or self.vae is None:
            return z
        return decode_latents(z, self.vae, batch_size=batch_size)


def split_indices(n: int, holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, held-out) indices; held-out = first ``holdout`` of a seeded permutation."""
    if not 0 < holdout < n:
        raise AntError(f"holdout must be in 1..{n - 1}, got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


# ----------------------------------------------------------------------------- entry point
def load_dataset(
    spec: str,
    resolution: int | None = None,
    vae: str | None = None,
    *,
    seed: int = 0,
    num_points: int = DEFAULT_POINTS,
) -> Dataset:
    """Load a data set from its spec; ``vae`` encodes images into cached latents.

    ``resolution`` resizes images (bilinear for digits/MNIST/npz, resize + center crop for
    folders). ``seed``/``num_points`` only affect the procedural 2-D toys.
    """
    if resolution is not None and resolution < 1:
        raise AntError(f"resolution must be >= 1, got {resolution}")
    data = _load_raw(spec, resolution, seed, num_points)
    if vae is None:
        return data
    if data.kind != "image":
        raise AntError(f"--vae needs an image data set, {data.name} holds {data.kind}")
    return encode_dataset(data, vae, spec=spec, resolution=resolution)


def _load_raw(spec: str, resolution: int | None, seed: int, num_points: int) -> Dataset:
    kind, _, arg = spec.partition(":")
    if spec == "digits":
        return load_digits(resolution)
    if kind == "toy":
        return load_toy(arg, num_points=num_points, seed=seed)
    if kind == "folder":
        return load_folder(arg, resolution)
    if kind == "npz":
        return load_npz(arg, resolution)
    if kind == "mnist":
        return load_mnist(arg, resolution)
    if Path(spec).is_dir():
        return load_folder(spec, resolution)
    if spec.endswith(".npz") and Path(spec).is_file():
        return load_npz(spec, resolution)
    raise AntError(
        f"unknown data spec {spec!r}; use digits, toy:{{{','.join(TOYS)}}}, folder:PATH, "
        "npz:PATH or mnist:DIR"
    )


# ----------------------------------------------------------------------------- images helpers
def _to_unit_range(images: np.ndarray) -> torch.Tensor:
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


def _image_dataset(x: torch.Tensor, labels: np.ndarray | None, name: str, **meta: Any) -> Dataset:
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
    return _image_dataset(resize(x, resolution), d.target, "digits")


# ----------------------------------------------------------------------------- 2-D toys
def load_toy(name: str, num_points: int = DEFAULT_POINTS, seed: int = 0) -> Dataset:
    """A procedural 2-D data set with roughly unit scale (std about 1 per coordinate)."""
    if name not in TOYS:
        raise AntError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
    if num_points < 1:
        raise AntError(f"num_points must be >= 1, got {num_points}")
    rng = np.random.default_rng(seed)
    x, labels, meta = _TOY_MAKERS[name](num_points, rng)
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    num_classes = 0 if labels is None else int(meta.pop("num_classes"))
    return Dataset(torch.as_tensor(x, dtype=torch.float32), y, num_classes, "points",
                   f"toy:{name}", meta)  # fmt: skip


def _gaussians8(n: int, rng: np.random.Generator) -> tuple:
    """8 isotropic Gaussians on a circle of radius sqrt(2): per-coordinate std close to 1."""
    angles = np.arange(8) * (2 * np.pi / 8)
    means = math.sqrt(2.0) * np.stack([np.cos(angles), np.sin(angles)], 1)
    std = 0.1
    comp = rng.integers(0, 8, n)
    x = means[comp] + std * rng.standard_normal((n, 2))
    meta = {"means": torch.tensor(means, dtype=torch.float32), "std": std, "num_classes": 8}
    return x, comp, meta


def _checkerboard(n: int, rng: np.random.Generator) -> tuple:
    """4x4 checkerboard on [-2, 2]^2, 8 filled squares; label = square index."""
    cx, cy = rng.integers(0, 4, n), rng.integers(0, 2, n)
    cy = 2 * cy + (cx % 2)  # filled squares alternate
    x = np.stack([cx + rng.random(n), cy + rng.random(n)], 1) - 2.0
    return x / 1.15, cx * 2 + cy // 2, {"num_classes": 8}


def _swissroll(n: int, rng: np.random.Generator) -> tuple:
    """The 2-D Swiss roll (x, z of scikit-learn's make_swiss_roll), standardised."""
    from sklearn.datasets import make_swiss_roll

    pts, _ = make_swiss_roll(n, noise=0.5, random_state=int(rng.integers(2**31)))
    x = pts[:, [0, 2]]
    return (x - x.mean(0)) / x.std(), None, {}


def _moons(n: int, rng: np.random.Generator) -> tuple:
    """Two interleaving half circles (scikit-learn's make_moons), standardised; label = moon."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - x.mean(0)) / x.std(), y, {"num_classes": 2}


def _rings(n: int, rng: np.random.Generator) -> tuple:
    """Four concentric rings of radii 0.5..2 (noise std 0.04); label = ring."""
    ring = rng.integers(0, 4, n)
    radius = 0.5 * (ring + 1) + 0.04 * rng.standard_normal(n)
    angle = rng.random(n) * 2 * np.pi
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return x, ring, {"num_classes": 4}


_TOY_MAKERS = {
    "gaussians8": _gaussians8,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "rings": _rings,
}


def mixture_log_prob(x: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """Per-point log-density [N] under an equal-weight isotropic Gaussian mixture.

    log p(x) = logsumexp_k [ -|x - mu_k|^2 / (2 s^2) ] - log K - (d/2) log(2 pi s^2).
    """
    x, means = x.double(), means.double().to(x.device)
    d2 = torch.cdist(x, means).square()
    k, dim = means.shape
    norm = math.log(k) + 0.5 * dim * math.log(2 * math.pi * std**2)
    return (torch.logsumexp(-d2 / (2 * std**2), dim=1) - norm).float()


# ----------------------------------------------------------------------------- folder
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
    x = _to_unit_range(np.stack(arrays))
    x = x[:, None] if mode == "L" else x.permute(0, 3, 1, 2)
    labels, classes = _folder_labels(root, files)
    return _image_dataset(x, labels, f"folder:{root}", class_names=classes)


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
    labels = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise AntError(f"npz {p}: labels must be integers, got {labels.dtype}")
    if a.ndim == 2 and a.shape[1] == 2 and a.dtype != np.uint8:
        return _points_from_array(a, labels, f"npz:{p}")
    return _image_dataset(resize(_npz_images(a, p), resolution), labels, f"npz:{p}")


def _npz_images(a: np.ndarray, p: Path) -> torch.Tensor:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise AntError(f"npz {p}: images must be numeric, got {a.dtype}")
    if a.ndim == 3:
        return _to_unit_range(a)[:, None]
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return _to_unit_range(a[..., :3] if a.shape[-1] == 4 else a).permute(0, 3, 1, 2)
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return _to_unit_range(a)
    raise AntError(f"npz {p}: images must be [N,H,W], [N,H,W,C] or [N,C,H,W], got {a.shape}")


def _points_from_array(a: np.ndarray, labels: np.ndarray | None, name: str) -> Dataset:
    x = torch.as_tensor(a, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise AntError(f"{name}: points contain NaN or infinite values")
    d = _image_dataset(x, labels, name)
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


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress``): the inverse of read_idx."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    a = np.asarray(array)
    if a.dtype not in codes:
        raise AntError(f"IDX cannot store dtype {a.dtype}")
    code = codes[a.dtype]
    head = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    raw = head + a.astype(_IDX_DTYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(raw, mtime=0) if compress else raw)


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
    optionally .gz, with the matching labels file); ``split`` is "train" or "t10k"."""
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
    x = resize(_to_unit_range(images)[:, None], resolution)
    return _image_dataset(x, labels, f"mnist:{root}")


# ----------------------------------------------------------------------------- VAE latents
def cache_dir() -> Path:
    """``$ANTDIFF_CACHE`` or ``~/.cache/antdiff``."""
    return Path(os.environ.get("ANTDIFF_CACHE") or Path.home() / ".cache" / "antdiff")


@functools.lru_cache(maxsize=4)
def load_vae(path_or_id: str) -> Any:
    """A diffusers AutoencoderKL from a local directory or a hub id (offline: hub cache only)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(path_or_id)
    except Exception as exc:
        raise AntError(f"cannot load VAE {path_or_id!r}: {exc}".splitlines()[0]) from exc
    return vae.eval().requires_grad_(False)


def _vae_fingerprint(path_or_id: str) -> str:
    p = Path(path_or_id).expanduser()
    if not p.is_dir():
        return path_or_id
    files = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in p.rglob("*") if f.is_file())  # fmt: skip
    return json.dumps([str(p.resolve()), files])


def latent_cache_key(data: Dataset, spec: str, vae: str, resolution: int | None) -> str:
    """sha256 of (spec, VAE path and files, resolution, the pixels themselves)."""
    h = hashlib.sha256()
    h.update(json.dumps([spec, _vae_fingerprint(vae), resolution]).encode())
    h.update(data.x.numpy().tobytes())
    return h.hexdigest()[:24]


def _vae_scale(vae: Any) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(vae.config.scaling_factor), float(shift)


@torch.no_grad()
def _encode(x: torch.Tensor, vae: Any, batch_size: int = 64) -> torch.Tensor:
    """z = (posterior mean - shift) * scaling_factor, in batches (deterministic)."""
    in_ch = vae.config.in_channels
    if x.shape[1] == 1 and in_ch == 3:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[1] != in_ch:
        raise AntError(f"VAE expects {in_ch}-channel images, data has {x.shape[1]}")
    scale, shift = _vae_scale(vae)
    device = next(vae.parameters()).device
    out = [(vae.encode(b.to(device)).latent_dist.mean - shift) * scale
           for b in x.split(batch_size)]  # fmt: skip
    return torch.cat(out).float().cpu()


def encode_dataset(data: Dataset, vae: str, *, spec: str, resolution: int | None) -> Dataset:
    """Encode an image data set with a VAE once; later calls read the cached latents."""
    from safetensors.torch import load_file, save_file

    key = latent_cache_key(data, spec, vae, resolution)
    path = cache_dir() / "latents" / f"{key}.safetensors"
    if path.is_file():
        z = load_file(path)["z"]
    else:
        z = _encode(data.x, load_vae(vae))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"z": z.contiguous()}, tmp, metadata={"spec": spec, "vae": vae})
        os.replace(tmp, path)
    meta = {**data.meta, "image_shape": list(data.sample_shape), "latent_cache": str(path)}
    return replace(data, x=z, kind="latent", meta=meta, vae=vae)


@torch.no_grad()
def decode_latents(z: torch.Tensor, vae: str, batch_size: int = 64) -> torch.Tensor:
    """Inverse of the encoding: x = D(z / scaling_factor + shift), clamped to [-1, 1]."""
    model = load_vae(vae)
    scale, shift = _vae_scale(model)
    device = next(model.parameters()).device
    out = [model.decode(b.to(device) / scale + shift).sample for b in z.split(batch_size)]
    return torch.cat(out).clamp(-1.0, 1.0).float().cpu()

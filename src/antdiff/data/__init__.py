"""Datasets as in-memory tensors: embedded digits, 2-D toys, image folders, .npz, MNIST IDX, and
their latents through a VAE.

Specs: ``digits``, ``animals`` (extra ``ant-diffusion[animals]``), ``toy:NAME``, ``folder:PATH``,
``npz:PATH``, ``mnist:DIR`` (a bare existing directory means ``folder:``, a bare ``*.npz`` file
means ``npz:``).
"""

from __future__ import annotations

from pathlib import Path

from antdiff.data.animals import load_animals
from antdiff.data.base import Dataset, Kind, cache_dir, split_indices
from antdiff.data.images import (
    load_digits,
    load_folder,
    load_mnist,
    load_npz,
    read_idx,
    resize,
    to_unit_range,
)
from antdiff.data.latents import decode_latents, encode_dataset, load_vae
from antdiff.data.toys import DEFAULT_POINTS, TOYS, load_toy
from antdiff.errors import AntError

__all__ = [
    "TOYS",
    "Dataset",
    "Kind",
    "cache_dir",
    "check_spec",
    "decode_latents",
    "load_animals",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_mnist",
    "load_npz",
    "load_toy",
    "load_vae",
    "read_idx",
    "resize",
    "split_indices",
    "to_unit_range",
]


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


def check_spec(spec: str) -> None:
    """The form of a data spec, before anything is read: a config check can know no more (a
    finished run's config is checked again where its data may be gone)."""
    kind, _, arg = spec.partition(":")
    if not spec.strip():
        raise AntError("--dataset is empty; use digits, toy:NAME, folder:PATH, npz:PATH, ...")
    if kind in ("toy", "folder", "npz", "mnist") and not arg.strip():
        raise AntError(f"--dataset {spec!r} names no {'data set' if kind == 'toy' else 'path'}")


def _load_raw(spec: str, resolution: int | None, seed: int, num_points: int) -> Dataset:
    check_spec(spec)
    kind, _, arg = spec.partition(":")
    if spec == "digits":
        return load_digits(resolution)
    if spec == "animals":
        return load_animals(resolution)
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
        f"unknown data spec {spec!r}; use digits, animals, toy:{{{','.join(TOYS)}}}, folder:PATH, "
        "npz:PATH or mnist:DIR"
    )

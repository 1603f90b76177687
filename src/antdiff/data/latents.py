"""Latent space through a diffusers AutoencoderKL, encoded once and cached on disk.

z = (mean(E(x)) - shift) * scaling_factor (LDM, Rombach et al. 2022); decoding inverts it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from antdiff.data.base import Dataset, cache_dir
from antdiff.errors import AntError


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
    files = sorted(
        (str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in p.rglob("*")
        if f.is_file()
    )
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
    out = [(vae.encode(b.to(device)).latent_dist.mean - shift) * scale for b in x.split(batch_size)]
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

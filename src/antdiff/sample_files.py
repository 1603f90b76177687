"""Samples to files: PNG grids of images, scatter plots of 2-D points, and .npz arrays that
`load_dataset("npz:PATH")` reads back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from antdiff.errors import AntError, replacing, writing


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [N,C,H,W] -> uint8 [N,H,W,C]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [N,C,H,W] images in [-1, 1] into one uint8 [H', W', C] array (pad pixels black)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise AntError(f"a grid needs [N,1|3,H,W] images (decode latents first), got {x.shape}")
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(to_uint8(x)):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = img
    return grid


def save_grid(
    x: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None, scale: int | None = None
) -> Path:
    """Write images as a PNG grid (upscaled, nearest, so cells are >= 32 px); 2-D points as a
    scatter plot."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 2:
        return save_scatter(x, path)
    grid = image_grid(x, nrow)
    scale = scale or max(1, 32 // int(x.shape[-1]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    with replacing(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_scatter(points: torch.Tensor, path: str | os.PathLike[str], lim: float = 3.5) -> Path:
    """Scatter plot of 2-D points (Agg backend, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def save_npz(
    path: str | os.PathLike[str], x: torch.Tensor, labels: torch.Tensor | None = None
) -> Path:
    """Write samples readable by ``load_dataset("npz:PATH")``: images as uint8 ``images``
    [N,H,W(,C)] plus raw float ``samples``; points as float ``x``; optional ``labels``."""
    arrays: dict[str, np.ndarray] = {}
    if x.ndim == 2:
        arrays["x"] = x.detach().float().cpu().numpy()
    else:
        arrays["samples"] = x.detach().float().cpu().numpy()
        if x.shape[1] in (1, 3):
            u8 = to_uint8(x)
            arrays["images"] = u8[..., 0] if u8.shape[-1] == 1 else u8
    if labels is not None:
        arrays["labels"] = labels.detach().cpu().numpy().astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def check_out(out: str | Path) -> Path:
    """`out` as a samples path, refused before any sampling: a folder, or a suffix that would be
    silently replaced (s.jpg would become s.npz), is one AntError line."""
    out = Path(out)
    if out.is_dir():
        raise AntError(f"--out {out} is a folder; give a file name such as {out / 'samples.npz'}")
    if out.suffix not in (".npz", ".png", ""):
        raise AntError(
            f"--out {out}: samples are written as .npz (+ .png) or .png, not {out.suffix}"
        )
    return out


def save_samples(x: torch.Tensor, out: str | Path, labels: torch.Tensor | None = None) -> Path:
    """FILE.npz and a picture beside it (FILE.png), or just the picture for a .png path; a
    folder or a path that cannot be written is one AntError line."""
    out = check_out(out)
    with writing(out):
        if out.suffix == ".png":
            return save_grid(x, out)
        npz = save_npz(out.with_suffix(".npz"), x, labels)
        save_grid(x, out.with_suffix(".png"))
    return npz

"""Data sets: shapes, ranges, labels, splits, file formats, errors and the VAE latent cache."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from antdiff import data as data_mod
from antdiff.data import TOYS, load_dataset, read_idx, split_indices
from antdiff.data import latents as latents_mod
from antdiff.errors import AntError
from antdiff.metrics import GaussianMixture, gmm_log_likelihood

IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file (LeCun's MNIST format), written independently of the reader under test."""
    a = np.asarray(array)
    code = IDX_CODES[f"{a.dtype.kind}{a.dtype.itemsize}"]
    raw = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    raw += a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)


@pytest.fixture(scope="module")
def digits() -> data_mod.Dataset:
    return load_dataset("digits")


# ----------------------------------------------------------------------------- digits
def test_digits_shape_range_labels(digits: data_mod.Dataset) -> None:
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == torch.float32
    assert digits.kind == "image" and digits.num_classes == 10 and digits.size == 8
    assert float(digits.x.min()) == -1.0 and float(digits.x.max()) == 1.0
    assert len(torch.unique(digits.x)) == 17  # 17 grey levels 0..16 mapped to [-1, 1]
    assert digits.labels is not None and digits.labels.dtype == torch.long
    assert torch.equal(torch.unique(digits.labels), torch.arange(10))


def test_digits_upsampled() -> None:
    d = load_dataset("digits", resolution=16)
    assert d.x.shape == (1797, 1, 16, 16)
    assert float(d.x.min()) >= -1.0 and float(d.x.max()) <= 1.0


def test_split_is_deterministic_and_disjoint(digits: data_mod.Dataset) -> None:
    train, held = digits.split(300, seed=1)
    train2, held2 = digits.split(300, seed=1)
    _, held3 = digits.split(300, seed=2)
    assert len(train) == 1497 and len(held) == 300
    assert torch.equal(held.x, held2.x) and torch.equal(train.labels, train2.labels)
    assert not torch.equal(held.x, held3.x)
    tr_idx, held_idx = split_indices(len(digits), 300, seed=1)
    assert torch.equal(held.x, digits.x[held_idx]) and torch.equal(train.x, digits.x[tr_idx])
    assert set(tr_idx.tolist()).isdisjoint(held_idx.tolist())
    assert sorted(tr_idx.tolist() + held_idx.tolist()) == list(range(len(digits)))
    with pytest.raises(AntError, match="holdout"):
        digits.split(len(digits), seed=0)


# ----------------------------------------------------------------------------- toys
@pytest.mark.parametrize("name", TOYS)
def test_toys_unit_scale_and_seeded(name: str) -> None:
    d = load_dataset(f"toy:{name}", num_points=4000)
    assert d.kind == "points" and d.x.shape == (4000, 2) and d.size == 0
    assert torch.isfinite(d.x).all()
    std = d.x.std(0)
    assert (std > 0.5).all() and (std < 1.5).all(), std
    assert d.x.mean(0).abs().max() < 0.2
    assert torch.equal(d.x, load_dataset(f"toy:{name}", num_points=4000).x)
    assert not torch.equal(d.x, load_dataset(f"toy:{name}", num_points=4000, seed=1).x)
    if d.labels is not None:
        assert int(d.labels.max()) == d.num_classes - 1


def test_gaussians8_density_matches_torch_distributions() -> None:
    d = load_dataset("toy:gaussians8", num_points=2000)
    means, std = d.meta["means"], d.meta["std"]
    assert means.shape == (8, 2)
    # Points lie near their component's mean.
    assert ((d.x - means[d.labels]).norm(dim=1) < 6 * std).all()
    dist = torch.distributions
    ref = dist.MixtureSameFamily(
        dist.Categorical(torch.ones(8)),
        dist.Independent(dist.Normal(means.double(), std), 1),
    )
    pts = torch.cat([d.x[:50], torch.randn(50, 2)])
    got = gmm_log_likelihood(pts, GaussianMixture(means, std))
    assert got == pytest.approx(float(ref.log_prob(pts.double()).mean()), rel=1e-6)


def test_unknown_specs() -> None:
    with pytest.raises(AntError, match="unknown data spec"):
        load_dataset("imagenet")
    with pytest.raises(AntError, match="unknown toy"):
        load_dataset("toy:spirals")


# ----------------------------------------------------------------------------- folder
def _png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_folder_subfolders_give_labels(tmp_path: Path) -> None:
    for cls, v in (("cat", 0), ("dog", 255)):
        for i in range(3):
            _png(
                tmp_path / cls / "sub" / f"{i}.png" if i == 2 else tmp_path / cls / f"{i}.png",
                (6, 6),
                value=v,
            )
    d = load_dataset(f"folder:{tmp_path}")
    assert d.x.shape == (6, 1, 6, 6) and d.kind == "image"
    assert d.num_classes == 2 and d.meta["class_names"] == ["cat", "dog"]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Class 0 images are black (-1), class 1 white (+1).
    assert torch.equal(d.x[d.labels == 0], torch.full((3, 1, 6, 6), -1.0))
    assert torch.equal(d.x[d.labels == 1], torch.ones(3, 1, 6, 6))
    assert torch.equal(load_dataset(str(tmp_path)).x, d.x)  # a bare directory is a folder


def test_folder_rgb_resize_crop_and_no_labels(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (20, 10), "RGB", value=200)
    _png(tmp_path / "b.png", (10, 10), "L")
    d = load_dataset(f"folder:{tmp_path}", resolution=8)
    assert d.x.shape == (2, 3, 8, 8) and d.labels is None and d.num_classes == 0
    assert torch.allclose(d.x[0, :, 4, 4], torch.tensor([200, 0, 55]) / 127.5 - 1.0)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(AntError, match="not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(AntError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    mixed = tmp_path / "mixed"
    _png(mixed / "a.png", (8, 8))
    _png(mixed / "b.png", (8, 9))
    with pytest.raises(AntError, match=r"mixed sizes: a.png is 8x8, b.png is 8x9") as err:
        load_dataset(f"folder:{mixed}")
    assert "\n" not in str(err.value)
    assert load_dataset(f"folder:{mixed}", resolution=4).x.shape == (2, 1, 4, 4)
    broken = tmp_path / "broken"
    _png(broken / "a.png", (8, 8))
    (broken / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(AntError, match=r"cannot read image .*b\.png"):
        load_dataset(f"folder:{broken}")


# ----------------------------------------------------------------------------- npz
def test_npz_variants(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 7, 7), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=u8, y=np.arange(5))
    d = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert d.x.shape == (5, 1, 7, 7) and d.labels.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(d.x[:, 0], torch.from_numpy(u8 / 127.5 - 1.0).float())
    f01 = rng.random((4, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=f01)
    d = load_dataset(f"npz:{tmp_path / 'b.npz'}", resolution=4)
    assert d.x.shape == (4, 3, 4, 4) and d.labels is None
    assert float(d.x.min()) >= -1.0 and float(d.x.max()) <= 1.0
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((10, 2)), labels=np.zeros(10, int))
    d = load_dataset(f"npz:{tmp_path / 'c.npz'}")
    assert d.kind == "points" and d.x.shape == (10, 2) and d.num_classes == 1


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(AntError, match="no array 'x' or 'images'"):
        load_dataset(f"npz:{tmp_path / 'nokey.npz'}")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 4, 4, 5, 5)))
    with pytest.raises(AntError, match="must be"):
        load_dataset(f"npz:{tmp_path / 'shape.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(AntError, match="cannot read npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 4, 4)), labels=np.arange(2))
    with pytest.raises(AntError, match="2 labels for 3 images"):
        load_dataset(f"npz:{tmp_path / 'lab.npz'}")


# ----------------------------------------------------------------------------- IDX / MNIST
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path: Path, compress: bool, dtype: type) -> None:
    a = (np.arange(2 * 3 * 4) * 3).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / "f", a, compress=compress)
    raw = (tmp_path / "f").read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == compress
    b = read_idx(tmp_path / "f")
    assert b.dtype == a.dtype and np.array_equal(a, b)


def test_idx_header_is_lecun_format(tmp_path: Path) -> None:
    write_idx(tmp_path / "f", np.zeros((2, 3), np.uint8))
    raw = (tmp_path / "f").read_bytes()
    assert raw == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(6)


@pytest.mark.parametrize("naming", ["train-images-idx3-ubyte", "train-images.idx3-ubyte"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_dir(tmp_path: Path, naming: str, gz: bool) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / (naming + suffix), imgs, compress=gz)
    write_idx(
        tmp_path / (naming.replace("images", "labels").replace("3", "1") + suffix),
        labels,
        compress=gz,
    )
    d = load_dataset(f"mnist:{tmp_path}")
    assert d.x.shape == (6, 1, 28, 28) and d.num_classes == 10
    assert d.labels.tolist() == labels.tolist()
    torch.testing.assert_close(d.x[:, 0], torch.from_numpy(imgs / 127.5 - 1).float())
    assert load_dataset(f"mnist:{tmp_path}", resolution=14).x.shape == (6, 1, 14, 14)


def test_idx_errors(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    full = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(full[:-3])  # truncated
    with pytest.raises(AntError, match="malformed IDX"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + full[2:])
    with pytest.raises(AntError, match="bad magic"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(full)[:-5])
    with pytest.raises(AntError, match="gzip"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(AntError, match="no train-images"):
        load_dataset(f"mnist:{tmp_path}")


# ----------------------------------------------------------------------------- VAE latents
def test_vae_latents_are_cached(
    tmp_path: Path, tiny_vae: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTDIFF_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 256, (6, 8, 8)))
    calls: list[int] = []
    real_encode = latents_mod._encode
    counted = lambda x, vae: calls.append(1) or real_encode(x, vae)  # noqa: E731
    monkeypatch.setattr(latents_mod, "_encode", counted)
    spec = f"npz:{tmp_path / 'd.npz'}"
    first = load_dataset(spec, vae=tiny_vae)
    assert first.kind == "latent" and first.x.shape == (6, 4, 4, 4) and len(calls) == 1
    assert first.vae == tiny_vae and Path(first.meta["latent_cache"]).is_file()
    # Latent = posterior mean * scaling factor.
    vae = data_mod.load_vae(tiny_vae)
    with torch.no_grad():
        mean = vae.encode(load_dataset(spec).x).latent_dist.mean
    torch.testing.assert_close(first.x, mean * 0.5)
    second = load_dataset(spec, vae=tiny_vae)
    assert len(calls) == 1 and torch.equal(first.x, second.x)  # cache hit: no re-encoding
    load_dataset(spec, resolution=4, vae=tiny_vae)  # another resolution is another key
    assert len(calls) == 2
    images = data_mod.decode_latents(first.x[:2], tiny_vae)
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1.0
    with pytest.raises(AntError, match="cannot load VAE"):
        load_dataset(spec, vae=str(tmp_path / "no-vae"))

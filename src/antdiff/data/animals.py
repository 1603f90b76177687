"""Animal-Shape: 10,000 grey 28x28 animal silhouettes in 10 classes (bear ... zebra).

Read from the files of the PyPI package ``animal-shape-mnist`` (MIT, optional extra
``ant-diffusion[animals]``) without importing its modules (they import TensorFlow): the package
is only located, and its two gzipped pickles are read by the array-only unpickler. The 284 exact
duplicate images are removed and the held-out order is content-defined (data/curate.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from antdiff.data.base import Dataset
from antdiff.data.curate import curate
from antdiff.data.images import image_dataset, resize, to_unit_range
from antdiff.data.safe_pickle import load_array
from antdiff.errors import AntError

PACKAGE = "animal_shape_mnist"
EXTRA = "pip install 'ant-diffusion[animals]'"
FOLDER = ("data", "Animal Shape")
IMAGES, LABELS = "animal_data_version_3.gz", "animal_label_version_3.gz"
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def animal_files() -> tuple[Path, Path]:
    """(images, labels) pickles of the installed package; its code is never run."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        spec = None
    roots = [] if spec is None else list(spec.submodule_search_locations or [])
    for root in roots:
        folder = Path(root).joinpath(*FOLDER)
        if (folder / IMAGES).is_file() and (folder / LABELS).is_file():
            return folder / IMAGES, folder / LABELS
    if not roots:
        raise AntError(f"the animals data set needs animal-shape-mnist: {EXTRA}")
    raise AntError(f"animal-shape-mnist is installed but lacks its data files; reinstall: {EXTRA}")


def read_animals() -> tuple[np.ndarray, np.ndarray]:
    """The raw uint8 images [10000, 28, 28] and integer labels [10000], as shipped."""
    images_path, labels_path = animal_files()
    images, labels = load_array(images_path), load_array(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise AntError(
            f"{images_path}: want uint8 [N,H,W] images, got {images.dtype} {images.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1]:
        raise AntError(f"{labels_path}: want {len(images)} integer labels, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise AntError(f"{labels_path}: labels outside 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


def load_animals(resolution: int | None = None) -> Dataset:
    """The de-duplicated Animal-Shape set in [-1, 1], labelled, with its fixed held-out order."""
    images, labels = read_animals()
    unique, kept_labels, order, removed = curate(images, labels)
    x = resize(to_unit_range(unique)[:, None], resolution)
    data = image_dataset(
        x, kept_labels, "animals", class_names=list(CLASSES), duplicates_removed=removed
    )
    data.heldout_order = order
    return data

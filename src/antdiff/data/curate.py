"""De-duplication and a fixed, content-defined held-out order for real image data sets.

Why: a held-out loss or FID is only honest when no held-out image is also a training image, and
when the split is the same for every run, seed and machine. Exact duplicates (identical pixel
bytes) are removed first, keeping the first occurrence in file order. The held-out order then
ranks the images of each class by the SHA-256 of their pixel bytes and interleaves the classes
(rank 0 of every class, then rank 1, ...), so the first H images of the order are a class-balanced
held-out set that depends on the images alone: not on the file order, the run seed or a random
number generator's version.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def content_hashes(images: np.ndarray) -> list[bytes]:
    """SHA-256 of each sample's bytes (its shape and dtype are the array's)."""
    a = np.ascontiguousarray(images)
    return [hashlib.sha256(a[i].tobytes()).digest() for i in range(len(a))]


def first_occurrences(hashes: list[bytes]) -> np.ndarray:
    """Indices of the first sample of each distinct hash, in their original order."""
    seen: set[bytes] = set()
    keep = []
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def heldout_order(hashes: list[bytes], labels: np.ndarray | None = None) -> np.ndarray:
    """A permutation of the samples: held-out = its first H entries (see the module docstring)."""
    n = len(hashes)
    groups = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    rank = np.empty(n, np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        by_hash = sorted(members.tolist(), key=lambda i: hashes[i])
        rank[by_hash] = np.arange(len(by_hash))
    return np.lexsort((groups, rank)).astype(np.int64)


def curate(
    images: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor, int]:
    """(unique images, their labels, their held-out order, number of duplicates removed)."""
    hashes = content_hashes(images)
    keep = first_occurrences(hashes)
    kept_hashes = [hashes[i] for i in keep]
    kept_labels = None if labels is None else np.asarray(labels)[keep]
    order = torch.from_numpy(heldout_order(kept_hashes, kept_labels))
    return images[keep], kept_labels, order, len(images) - len(keep)

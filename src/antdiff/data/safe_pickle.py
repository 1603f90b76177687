"""Read a pickled numpy array without running arbitrary code.

A pickle may name any importable callable (``os.system`` ...) and the unpickler calls it. Some
published data sets (e.g. animal-shape-mnist) ship their arrays only as pickles, so we read them
with an unpickler that resolves exactly the three globals a plain ndarray needs and refuses every
other name before anything is called.
"""

from __future__ import annotations

import gzip
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from antdiff.errors import AntError

MAX_BYTES = 256 * 2**20  # a decompressed pickle larger than this is refused (gzip bombs)


def _reconstruct() -> Any:
    """numpy's array-rebuilding function (``numpy._core`` since numpy 2, ``numpy.core`` before)."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise AntError("this numpy has no multiarray._reconstruct; cannot read pickled arrays")


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED = {
    **{(m, "_reconstruct"): "_reconstruct" for m in _MULTIARRAY},
    **{(m, name): name for m in ("numpy", *_MULTIARRAY) for name in ("ndarray", "dtype")},
}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that knows only numpy's ``_reconstruct``, ``ndarray`` and ``dtype``."""

    def find_class(self, module: str, name: str) -> Any:
        what = ALLOWED.get((module, name))
        if what is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if what == "_reconstruct":
            return _reconstruct()
        return np.ndarray if what == "ndarray" else np.dtype


def load_array(path: str | Path) -> np.ndarray:
    """The numpy array pickled (optionally gzipped) in ``path``; anything else is an AntError."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(2)
            f.seek(0)
            stream = gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f
            raw = stream.read(MAX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise AntError(f"cannot read {p}: {exc}".splitlines()[0]) from exc
    if len(raw) > MAX_BYTES:
        raise AntError(f"{p} holds more than {MAX_BYTES >> 20} MiB of pickle: refused")
    try:
        value = ArrayUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # malformed pickles raise many types
        raise AntError(f"cannot read {p} as a pickled numpy array: {exc}".splitlines()[0]) from exc
    if not isinstance(value, np.ndarray) or value.dtype.hasobject:
        raise AntError(f"{p} does not hold a plain numpy array")
    return value

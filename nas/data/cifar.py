"""CIFAR-10 / CIFAR-100 from a local copy, in the python-pickle or the binary layout.

CIFAR's python layout is a pickle; it is read with a restricted unpickler that can only rebuild
numpy arrays, never with plain ``pickle.load``.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from nas.core.files import FileProblem
from nas.data.dataset import (
    ImageDataset,
    _build_dataset,
    _check_dir,
    _check_fractions,
    _stratified_split,
)

__all__ = ["CIFAR_LAYOUTS", "UnsafePickleError", "load_cifar", "restricted_pickle_load"]

logger = logging.getLogger(__name__)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than the numpy arrays a data file needs."""


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    # Take the functions from numpy itself so the table matches the installed version, and
    # accept both spellings (numpy.core before 2.0, numpy._core after) as files carry either.
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # Python 3 writes bytes this way at protocol 2
    }
    reduced: list[tuple[str, Callable[..., Any]]] = [
        ("multiarray", cast(tuple[Any, ...], np.array(0).__reduce__())[0]),  # _reconstruct
        ("multiarray", cast(tuple[Any, ...], np.float64(0).__reduce__())[0]),  # scalar
        ("numeric", cast(tuple[Any, ...], np.arange(2).__reduce_ex__(5))[0]),  # _frombuffer
    ]
    for module, func in reduced:
        for package in ("numpy.core", "numpy._core"):
            table[(f"{package}.{module}", func.__name__)] = func
    for dtype_class in (type(np.dtype(t)) for t in ("u1", "i8", "f4", "f8", "S1", "U1")):
        table[("numpy.dtypes", dtype_class.__name__)] = dtype_class
    return table


_PICKLE_ALLOWED = _numpy_reconstructors()


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_PICKLE_ALLOWED``; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _PICKLE_ALLOWED))
            raise UnsafePickleError(
                f"refusing to load {module}.{name} from a pickle: data files may only hold "
                f"numpy arrays, lists, dicts, numbers and strings (allowed globals: {allowed})"
            ) from None


_FRESH_COPY = "download a fresh copy of the data set (the file is cut short or of another kind)"


def restricted_pickle_load(path: str | os.PathLike[str]) -> Any:
    """Load a data pickle (CIFAR's python layout) that may only rebuild numpy arrays.

    Raises :class:`UnsafePickleError` for any other global, so a crafted file cannot run code.
    """
    data = Path(path).read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FileProblem(path, f"is not a readable CIFAR pickle: {exc}", _FRESH_COPY) from exc


CIFAR_LAYOUTS: dict[str, tuple[str, ...]] = {
    "cifar10-python": (
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    "cifar100-python": ("train", "test", "meta"),
    "cifar10-binary": (
        *(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test_batch.bin",
        "batches.meta.txt",
    ),
    "cifar100-binary": ("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"),
}
# The folder names of the official archives, so the archive's parent folder works too.
_CIFAR_SUBDIRS = (
    "cifar-10-batches-py",
    "cifar-100-python",
    "cifar-10-batches-bin",
    "cifar-100-binary",
)


def _detect_cifar(root: Path) -> tuple[str, Path] | None:
    """(layout, folder) of a CIFAR copy at ``root`` or in its official sub-folder, else None."""
    candidates = [root] + [root / sub for sub in _CIFAR_SUBDIRS if (root / sub).is_dir()]
    best: tuple[int, str, Path] | None = None
    for folder in candidates:
        for layout, names in CIFAR_LAYOUTS.items():
            present = sum((folder / n).is_file() for n in names)
            if present == len(names):
                return layout, folder
            # A CIFAR-100 "train"/"test" pair alone is too generic to claim a partial match.
            distinctive = [n for n in names if n not in ("train", "test")]
            if any((folder / n).is_file() for n in distinctive) and (
                best is None or present > best[0]
            ):
                best = (present, layout, folder)
    if best is not None:
        _, layout, folder = best
        missing = [n for n in CIFAR_LAYOUTS[layout] if not (folder / n).is_file()]
        raise FileNotFoundError(
            f"{folder} looks like the {layout} layout of CIFAR but lacks {missing}; "
            f"that layout needs {list(CIFAR_LAYOUTS[layout])}"
        )
    return None


def load_cifar(
    path: str | os.PathLike[str],
    val_fraction: float = 0.1,
    seed: int = 0,
    resolution: int | None = None,
    label: str = "fine",
) -> ImageDataset:
    """CIFAR-10 or CIFAR-100 from a local copy, in the python-pickle or the binary layout.

    ``path`` is the extracted folder (``cifar-10-batches-py``, ``cifar-100-python``,
    ``cifar-10-batches-bin``, ``cifar-100-binary``) or its parent. The official test set is the
    test split; ``val_fraction`` of the training set (stratified, seeded) is the validation
    split. ``resolution`` resizes (bilinear, antialiased) from 32 px; ``label`` picks CIFAR-100's
    ``fine`` (100) or ``coarse`` (20) labels.
    """
    root = Path(path).expanduser()
    _check_dir(root, "CIFAR")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse' (CIFAR-100 only); got {label!r}")
    _check_fractions(val_fraction, 0.0)
    found = _detect_cifar(root)
    if found is None:
        layouts = "; ".join(f"{k}: {', '.join(v)}" for k, v in CIFAR_LAYOUTS.items())
        raise FileNotFoundError(
            f"{root} holds no CIFAR copy; expected the files of one of these layouts "
            f"(in the folder or its official sub-folder): {layouts}"
        )
    layout, folder = found
    if layout == "cifar10-python":
        parts = [_read_cifar_pickle(folder / n, b"labels") for n in CIFAR_LAYOUTS[layout][:5]]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _read_cifar_pickle(folder / "test_batch", b"labels")
        names = _meta_names(folder / "batches.meta", b"label_names")
    elif layout == "cifar100-python":
        key = b"fine_labels" if label == "fine" else b"coarse_labels"
        x_train, y_train = _read_cifar_pickle(folder / "train", key)
        x_test, y_test = _read_cifar_pickle(folder / "test", key)
        names = _meta_names(
            folder / "meta", b"fine_label_names" if label == "fine" else b"coarse_label_names"
        )
    elif layout == "cifar10-binary":
        parts = [_read_cifar_bin(folder / n, 1, 0) for n in CIFAR_LAYOUTS[layout][:5]]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _read_cifar_bin(folder / "test_batch.bin", 1, 0)
        names = _text_names(folder / "batches.meta.txt")
    else:
        offset = 1 if label == "fine" else 0
        x_train, y_train = _read_cifar_bin(folder / "train.bin", 2, offset)
        x_test, y_test = _read_cifar_bin(folder / "test.bin", 2, offset)
        names = _text_names(folder / f"{label}_label_names.txt")
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise ValueError(
                f"{folder}: {split} labels must lie in [0, {len(names)}) (one per class name); "
                f"found [{y.min()}, {y.max()}]"
            )
    if resolution is not None and resolution != x_train.shape[-1]:
        x_train, x_test = _resize_uint8(x_train, resolution), _resize_uint8(x_test, resolution)
    idx = _stratified_split(y_train, val_fraction, 0.0, seed)
    n_train = len(y_train)
    logger.info("loaded %s from %s: train=%d test=%d", layout, folder, n_train, len(y_test))
    return _build_dataset(
        "cifar10" if layout.startswith("cifar10-") else "cifar100",
        {"train": x_train[idx["train"]], "val": x_train[idx["val"]], "test": x_test},
        {"train": y_train[idx["train"]], "val": y_train[idx["val"]], "test": y_test},
        names,
        {"train": idx["train"], "val": idx["val"], "test": n_train + np.arange(len(y_test))},
    )


def _read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_pickle_load(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise FileProblem(
            path, f"must hold a dict with keys b'data' and {label_key!r}; found {keys}", _FRESH_COPY
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise FileProblem(
            path,
            f"b'data' must be uint8 of shape (N, 3072) (32x32 RGB, channel-major); "
            f"found {data.dtype} {data.shape}",
            _FRESH_COPY,
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise FileProblem(
            path,
            f"{label_key!r} must hold {data.shape[0]} integer labels; "
            f"found {labels.dtype} {labels.shape}",
            _FRESH_COPY,
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _meta_names(path: Path, key: bytes) -> list[str]:
    meta = restricted_pickle_load(path)
    if not isinstance(meta, dict) or key not in meta:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise FileProblem(path, f"must hold a dict with key {key!r}; found {keys}", _FRESH_COPY)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _text_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_cifar_bin(
    path: Path, label_bytes: int, label_offset: int
) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3 * 32 * 32
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise FileProblem(
            path,
            f"must hold whole records of {record} bytes ({label_bytes} label byte(s) then "
            f"3072 pixel bytes); its size is {raw.size} bytes",
            _FRESH_COPY,
        )
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_offset].astype(np.int64)


def _resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    out = np.empty((len(images), images.shape[1], resolution, resolution), dtype=np.uint8)
    for start in range(0, len(images), 4096):
        x = torch.from_numpy(images[start : start + 4096]).float()  # n,C,32,32
        y = torch.nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + len(x)] = y.round().clamp(0, 255).to(torch.uint8).numpy()
    return out

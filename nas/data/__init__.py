"""Datasets: the embedded default (augmented scikit-learn digits), image folders and CIFAR.

`load_dataset` picks one by name or path: ``"digits"`` (`nas.data.digits`, no download), a
local folder in the ImageFolder layout (`nas.data.folders`) or a CIFAR-10 / CIFAR-100 copy
(`nas.data.cifar`, read without plain unpickling). Each gives an `ImageDataset`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from nas.data.cifar import (
    CIFAR_LAYOUTS,
    UnsafePickleError,
    _detect_cifar,
    load_cifar,
    restricted_pickle_load,
)
from nas.data.dataset import SPLITS, ImageDataset, _check_dir
from nas.data.digits import CACHE_ENV_VAR as CACHE_ENV_VAR  # importable, not in __all__
from nas.data.digits import default_cache_dir, load_embedded_digits
from nas.data.folders import IMAGE_EXTENSIONS, load_image_folder

__all__ = [
    "CIFAR_LAYOUTS",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageDataset",
    "UnsafePickleError",
    "default_cache_dir",
    "load_cifar",
    "load_dataset",
    "load_embedded_digits",
    "load_image_folder",
    "restricted_pickle_load",
]

DATASET_NAMES: tuple[str, ...] = ("digits",)


def load_dataset(name_or_path: str | os.PathLike[str] = "digits", **kwargs: Any) -> ImageDataset:
    """A dataset by name (``"digits"``, the embedded default) or from a local path.

    A string equal to a name in :data:`DATASET_NAMES` is that dataset (pass ``./digits`` or a
    ``Path`` for a folder of that name). A path is read as CIFAR when it holds a CIFAR layout,
    else as an image folder. ``kwargs`` go to the loader chosen.
    """
    if isinstance(name_or_path, str) and name_or_path in DATASET_NAMES:
        return load_embedded_digits(**kwargs)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        hint = ""
        if isinstance(name_or_path, str):
            close = difflib.get_close_matches(name_or_path, DATASET_NAMES, n=3)
            if close:
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?"
        raise FileNotFoundError(
            f"dataset {str(name_or_path)!r} is neither a known name {list(DATASET_NAMES)} nor an "
            f"existing path (an ImageFolder or CIFAR directory){hint}"
        )
    _check_dir(path, "dataset")
    if _detect_cifar(path) is not None:
        return load_cifar(path, **kwargs)
    return load_image_folder(path, **kwargs)

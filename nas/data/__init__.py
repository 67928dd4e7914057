"""Datasets: the embedded default (augmented scikit-learn digits), image folders and CIFAR.

`load_dataset` picks one by name or path: ``"digits"`` (`nas.data.digits`, no download), a
local folder in the ImageFolder layout (`nas.data.folders`) or a CIFAR-10 / CIFAR-100 copy
(`nas.data.cifar`, read without plain unpickling). Each gives an `ImageDataset` held in memory,
except an image folder too big for that (or asked for with ``stream=True``): a
`StreamedDataset` (`nas.data.streamed`) that decodes and augments in DataLoader workers.
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
from nas.data.folders import IMAGE_EXTENSIONS, _class_dirs, _image_files, load_image_folder
from nas.data.streamed import (
    ON_BAD,
    BadImage,
    StreamedDataset,
    StreamedImages,
    StreamLoader,
    collate_images,
    load_streamed_folder,
    presplit_layout,
)
from nas.data.transforms import AUGMENTATIONS

__all__ = [
    "AUGMENTATIONS",
    "CIFAR_LAYOUTS",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ON_BAD",
    "SPLITS",
    "STREAM_ABOVE_BYTES",
    "BadImage",
    "ImageDataset",
    "StreamLoader",
    "StreamedDataset",
    "StreamedImages",
    "UnsafePickleError",
    "collate_images",
    "default_cache_dir",
    "load_cifar",
    "load_dataset",
    "load_embedded_digits",
    "load_image_folder",
    "load_streamed_folder",
    "presplit_layout",
    "restricted_pickle_load",
]

DATASET_NAMES: tuple[str, ...] = ("digits",)

#: an image folder whose decoded float32 images would take more than this is streamed when
#: `load_dataset` chooses (stream=None): 1 GiB, about 20,000 images at 64 px or 1,700 at 224 px
STREAM_ABOVE_BYTES = 1 << 30
#: the arguments only the streamed loader takes; an in-memory choice drops them
_STREAM_ONLY = ("augment", "on_bad", "mean", "std", "stats_images")


def load_dataset(
    name_or_path: str | os.PathLike[str] = "digits", stream: bool | None = None, **kwargs: Any
) -> ImageDataset | StreamedDataset:
    """A dataset by name (``"digits"``, the embedded default) or from a local path.

    A string equal to a name in :data:`DATASET_NAMES` is that dataset (pass ``./digits`` or a
    ``Path`` for a folder of that name). A path is read as CIFAR when it holds a CIFAR layout,
    else as an image folder: streamed from disk (`load_streamed_folder`) when ``stream`` is
    True, or when it is None and the folder's decoded images would exceed
    :data:`STREAM_ABOVE_BYTES`; else held in memory (`load_image_folder`). ``kwargs`` go to the
    loader chosen.
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
        if stream:
            raise ValueError(
                f"{path} holds a CIFAR copy, which is read into memory (about 180 MB); pass "
                "stream=False or None, or convert it to an image folder to stream it"
            )
        return load_cifar(path, **kwargs)
    if presplit_layout(path) is not None:  # train/ beside val/ or test/: the streamed loader's
        if stream is False:
            raise ValueError(
                f"{path} is already split (train/ beside val/ or test/), which only the streamed "
                "loader reads; pass stream=True or None"
            )
        stream = True
    if stream is None:
        stream = _decoded_bytes(path, kwargs) > STREAM_ABOVE_BYTES
    if stream:
        return load_streamed_folder(path, **kwargs)
    return load_image_folder(path, **{k: v for k, v in kwargs.items() if k not in _STREAM_ONLY})


def _decoded_bytes(root: Path, kwargs: dict[str, Any]) -> int:
    """What the in-memory loader would hold for the folder: float32 images, one per file."""
    files, _ = _image_files(_class_dirs(root))
    resolution = int(kwargs.get("resolution", 32))
    return len(files) * int(kwargs.get("channels", 3)) * resolution * resolution * 4

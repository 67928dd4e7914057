"""Datasets: the embedded default (augmented scikit-learn digits), image folders and CIFAR."""

from __future__ import annotations

from nas.data.digits import CACHE_ENV_VAR as CACHE_ENV_VAR  # importable, not in __all__
from nas.data.digits import (
    CIFAR_LAYOUTS,
    DATASET_NAMES,
    IMAGE_EXTENSIONS,
    SPLITS,
    ImageDataset,
    UnsafePickleError,
    default_cache_dir,
    load_cifar,
    load_dataset,
    load_embedded_digits,
    load_image_folder,
    restricted_pickle_load,
)

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

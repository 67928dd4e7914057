"""The dataset object (`ImageDataset`: three normalised splits) and the helpers every loader
uses to split and normalise its images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["SPLITS", "ImageDataset"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")


Loader = DataLoader[tuple[torch.Tensor, ...]]


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity; the splits are big tensors
class ImageDataset:
    """Three splits of normalised images, ready for training.

    ``train``, ``val`` and ``test`` hold ``(images, labels)``: images float32 ``N x C x H x W``
    normalised per channel with the train split's ``mean`` and ``std`` (of pixel values in
    [0, 1]); labels int64 in ``[0, num_classes)``. ``source_ids`` gives, per split, the id of the
    source each sample came from (augmented copies share one id; ids are unique across splits
    for every loader), so tests and users can check that no source crosses splits.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_ids: Mapping[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> TensorDataset:
        """The split called ``name`` (one of train, val, test)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}")
        ds: TensorDataset = getattr(self, name)
        return ds

    def groups(self, name: str) -> np.ndarray:
        """Per sample of split ``name``, the group its errors are correlated within: the id of
        its source (the embedded digits' augmented copies of one digit share one), or, where no
        source ids were given, the sample's own index (every sample a group of one).

        A bootstrap of test accuracy resamples these groups, not images
        (:func:`nas.supernet.accuracy_interval`)."""
        n = len(self.split(name))
        ids = self.source_ids.get(name)
        if ids is None:
            return np.arange(n, dtype=np.int64)
        if len(ids) != n:
            raise ValueError(f"source_ids[{name!r}] has {len(ids)} ids for {n} samples")
        return np.asarray(ids, dtype=np.int64)

    def loaders(
        self,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
    ) -> tuple[Loader, Loader, Loader]:
        """Train (shuffled by a generator seeded with ``seed``), validation and test loaders."""
        for label, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{label} must be a positive int; got {value!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0; got {num_workers!r}")
        generator = torch.Generator().manual_seed(seed)
        eval_bs = eval_batch_size or batch_size
        train = DataLoader(
            self.train,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            num_workers=num_workers,
        )
        val = DataLoader(self.val, batch_size=eval_bs, shuffle=False, num_workers=num_workers)
        test = DataLoader(self.test, batch_size=eval_bs, shuffle=False, num_workers=num_workers)
        return train, val, test

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return (
            f"ImageDataset(name={self.name!r}, {sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )


def _build_dataset(
    name: str,
    images: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    source_ids: Mapping[str, np.ndarray],
) -> ImageDataset:
    """Normalise uint8 ``N x C x H x W`` splits with the train split's statistics."""
    train = images["train"]
    if train.shape[0] == 0:
        raise ValueError(f"dataset {name!r}: the train split is empty; it needs at least 1 image")
    channels = train.shape[1]
    # Per-channel histograms of the uint8 values give the exact mean and std cheaply.
    levels = np.arange(256) / 255.0
    hist = np.stack(
        [np.bincount(train[:, c].ravel(), minlength=256) for c in range(channels)]
    ).astype(np.float64)  # C,256
    hist /= hist.sum(axis=1, keepdims=True)
    mean = hist @ levels
    var = hist @ levels**2 - mean**2
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-3)  # a constant channel: no division by 0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    splits: dict[str, TensorDataset] = {}
    for split in SPLITS:
        x = torch.from_numpy(np.ascontiguousarray(images[split])).float().div_(255.0)  # N,C,H,W
        x = (x - mean_t) / std_t
        y = torch.from_numpy(np.asarray(labels[split], dtype=np.int64))
        splits[split] = TensorDataset(x, y)
    shape = (int(train.shape[1]), int(train.shape[2]), int(train.shape[3]))
    return ImageDataset(
        name=name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(class_names),
        input_shape=shape,
        class_names=tuple(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        source_ids={k: np.asarray(v, dtype=np.int64) for k, v in source_ids.items()},
    )


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{label} must be in [0, 1); got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "val_fraction + test_fraction must be < 1 so that something is left to train on; "
            f"got {val_fraction} + {test_fraction}"
        )


def _stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices per split, the same fractions within every class, sorted."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def _check_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise FileNotFoundError(f"{what} path {root} does not exist; give an existing directory")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} path {root} is a file; it must be a directory")

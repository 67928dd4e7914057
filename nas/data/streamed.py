"""Streamed image folders: decoded lazily in DataLoader workers, with seeded augmentation.

For data too big to hold in memory (`load_image_folder` decodes every image into one array):
`load_streamed_folder` lists the files, checks their headers, splits them as the in-memory
loader does (stratified, seeded; the same images land in the same splits) and gives a
`StreamedDataset`, whose splits decode and augment each image when a batch asks for it, in the
DataLoader's worker processes. Augmentation is seeded by (seed, epoch, sample index)
(`nas.data.transforms`), so a batch is the same whatever the number of workers, and a run
resumed in the middle of an epoch sees the batches it would have seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from nas.core.files import FileProblem
from nas.data.dataset import SPLITS, _check_dir, _check_fractions, _stratified_split
from nas.data.transforms import augment_rng, eval_transform, resolve_augment, train_transform

__all__ = [
    "ON_BAD",
    "BadImage",
    "StreamLoader",
    "StreamedDataset",
    "StreamedImages",
    "collate_images",
    "load_streamed_folder",
    "presplit_layout",
]

logger = logging.getLogger(__name__)

#: what to do with an image that cannot be read: leave it out (counted, the first few named) or
#: stop with a `FileProblem` naming it
ON_BAD: tuple[str, ...] = ("skip", "error")
_REMEDY = "replace it with a readable image, or delete it (or pass on_bad='skip')"
_REMEDY_SPLIT = "every split folder must use the class folders of train/"


@dataclass(frozen=True)
class BadImage:
    """An image a worker could not decode (returned in its place, so the main process decides)."""

    path: str
    problem: str


class StreamedImages(Dataset[Any]):
    """One split of image files: item ``i`` is (float32 C x H x W normalised, label), decoded
    from its file when asked; train splits augment it with a generator seeded by
    (seed, epoch, i). Set the epoch with `set_epoch` before each epoch's loader starts."""

    def __init__(
        self,
        files: Sequence[str],
        labels: np.ndarray,
        *,
        resolution: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        seed: int = 0,
        on_bad: str = "skip",
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = [str(f) for f in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resolution = resolution
        self.channels = channels
        self.augment = resolve_augment(augment, resolution)
        self.seed = seed
        self.on_bad = on_bad  # what the loaders do with an image that does not decode
        self.epoch = 0
        self._mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1) * 255.0
        self._scale = 1.0 / (np.asarray(std, dtype=np.float32).reshape(-1, 1, 1) * 255.0)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next loader's augmentation is seeded with (workers copy it at start)."""
        self.epoch = int(epoch)

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` through the eval transform: uint8 C x H x W (raises on a bad file)."""
        return eval_transform(self._open(index), self.resolution, self.channels)

    def _open(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.files[index]) as opened:
            return opened.convert("RGB" if self.channels == 3 else "L")

    def __getitem__(self, index: int) -> tuple[Tensor, int] | BadImage:
        try:
            im = self._open(index)
            if self.augment == "none":
                arr = eval_transform(im, self.resolution, self.channels)
            else:
                rng = augment_rng(self.seed, self.epoch, index)
                arr = train_transform(im, self.resolution, self.channels, self.augment, rng)
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            return BadImage(self.files[index], f"cannot read image ({exc})")
        x = (arr.astype(np.float32) - self._mean) * self._scale  # C x H x W
        return torch.from_numpy(x), int(self.labels[index])


def collate_images(
    items: Sequence[tuple[Tensor, int] | BadImage],
) -> tuple[Tensor, Tensor, list[BadImage]]:
    """A batch (images B x C x H x W, labels B) and the images that could not be read."""
    good = [it for it in items if not isinstance(it, BadImage)]
    bad = [it for it in items if isinstance(it, BadImage)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), bad
    x = torch.stack([g[0] for g in good])  # B x C x H x W
    y = torch.as_tensor([g[1] for g in good], dtype=torch.int64)  # B
    return x, y, bad


class StreamLoader:
    """Iterates a DataLoader of `collate_images` batches as (images, labels): an image that a
    worker could not read is left out and counted (`skipped`), or stops the run with a
    `FileProblem` naming it, as `on_bad` says."""

    def __init__(self, loader: DataLoader[Any], on_bad: str = "skip") -> None:
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {list(ON_BAD)}; got {on_bad!r}")
        self.loader = loader
        self.on_bad = on_bad
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        dataset = self.loader.dataset
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler) and isinstance(dataset, StreamedImages):
            sampler.set_epoch(dataset.epoch)
        for x, y, bad in self.loader:
            self.check(bad)
            if len(y):
                yield x, y

    def check(self, bad: Sequence[BadImage]) -> None:
        """Raise for the first bad image (on_bad='error'), or count them and say so."""
        if not bad:
            return
        if self.on_bad == "error":
            raise FileProblem(bad[0].path, bad[0].problem, _REMEDY)
        if not self.skipped:
            logger.warning("skipping unreadable image %s: %s", bad[0].path, bad[0].problem)
        self.skipped += [b.path for b in bad]


@dataclass(frozen=True, eq=False)
class StreamedDataset:
    """Three streamed splits with the surface of `ImageDataset` (name, splits, classes, input
    shape, normalisation, `split`, `groups`, `loaders`). ``skipped`` lists the files left out
    when the folder was read (their headers could not be read)."""

    name: str
    train: StreamedImages
    val: StreamedImages
    test: StreamedImages
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    on_bad: str = "skip"
    skipped: tuple[str, ...] = ()
    source_ids: dict[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> StreamedImages:
        """The split called ``name`` (one of train, val, test)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}")
        ds: StreamedImages = getattr(self, name)
        return ds

    def groups(self, name: str) -> np.ndarray:
        """Every sample its own group (each file is its own source)."""
        return np.arange(len(self.split(name)), dtype=np.int64)

    def loaders(
        self,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 2,
        eval_batch_size: int | None = None,
        epoch: int = 0,
        pin_memory: bool = False,
    ) -> tuple[StreamLoader, StreamLoader, StreamLoader]:
        """Train (shuffled per seed and epoch; a `DistributedSampler` when a process group is
        up), validation and test loaders, decoding in `num_workers` worker processes."""
        for label, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{label} must be a positive int; got {value!r}")
        self.train.set_epoch(epoch)
        sampler: Sampler[int]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(self.train, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
        else:
            sampler = _SeededShuffle(len(self.train), seed, self.train)
        out = [self._loader(self.train, batch_size, num_workers, pin_memory, sampler=sampler)]
        for split in (self.val, self.test):
            out.append(self._loader(split, eval_batch_size or batch_size, num_workers, pin_memory))
        return out[0], out[1], out[2]

    def _loader(
        self,
        split: StreamedImages,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        sampler: Sampler[int] | None = None,
    ) -> StreamLoader:
        loader = DataLoader(
            split,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=pin_memory,
        )
        return StreamLoader(loader, self.on_bad)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return (
            f"StreamedDataset(name={self.name!r}, {sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, skipped={len(self.skipped)})"
        )


class _SeededShuffle(Sampler[int]):
    """A permutation seeded by (seed, the dataset's epoch when iterated): the same order for
    the same seed and epoch, in any process."""

    def __init__(self, n: int, seed: int, dataset: StreamedImages) -> None:
        self.n, self.seed, self.dataset = n, seed, dataset

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.dataset.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def load_streamed_folder(
    path: str | os.PathLike[str],
    resolution: int = 32,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    channels: int = 3,
    *,
    augment: str = "auto",
    on_bad: str = "skip",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_images: int = 512,
) -> StreamedDataset:
    """An image folder (``root/<class>/<image>``, as `load_image_folder`) streamed from disk.

    Files whose header cannot be read are left out (``on_bad="skip"``: counted in ``skipped``,
    the first few named in a warning) or raise a `FileProblem` naming the first
    (``on_bad="error"``); an image that opens but fails to decode later is treated the same way
    by the loaders. The split is the in-memory loader's. ``mean`` / ``std`` (per channel, of
    pixels in [0, 1]) default to estimates from ``stats_images`` seeded train images.
    ``augment`` is the train split's augmentation (`nas.data.transforms.AUGMENTATIONS`; "auto":
    crop with padding and flip up to 32 px, random resized crop and flip above).
    """
    root = Path(path).expanduser()
    _check_dir(root, "image folder")
    _check_settings(resolution, channels, on_bad, augment)
    _check_fractions(val_fraction, test_fraction)
    split_files, split_labels, class_names, skipped = _listing(
        root, val_fraction, test_fraction, seed, on_bad
    )
    common: dict[str, Any] = {"resolution": resolution, "channels": channels, "seed": seed}
    common["on_bad"] = on_bad
    if mean is None or std is None:
        probe = StreamedImages(
            split_files["train"], split_labels["train"], **common, mean=[0], std=[1]
        )
        est_mean, est_std = _estimate_stats(probe, stats_images, seed)
        mean, std = est_mean if mean is None else mean, est_std if std is None else std
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} value(s) each; got {mean!r}, {std!r}")
    splits = {
        s: StreamedImages(
            split_files[s],
            split_labels[s],
            **common,
            mean=mean,
            std=std,
            augment=augment if s == "train" else "none",
        )
        for s in SPLITS
    }
    sizes = ", ".join(f"{s}={len(split_files[s])}" for s in SPLITS)
    logger.info(
        "streaming %s: %d classes, %s, %d skipped", root, len(class_names), sizes, len(skipped)
    )
    return StreamedDataset(
        name=root.name or str(root),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(class_names),
        input_shape=(channels, resolution, resolution),
        class_names=tuple(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        on_bad=on_bad,
        skipped=tuple(str(p) for p in skipped),
    )


def presplit_layout(root: Path) -> dict[str, Path] | None:
    """The split folders of a folder already split (``root/train/<class>/<image>`` beside
    ``root/test/...`` and / or ``root/val/...``, as CIFAR and ImageNet come as images), or None
    for a plain ``root/<class>/<image>`` folder."""
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in found or len(found) < 2:
        return None
    # a plain folder may have classes called train and test: only sub-folders inside say split
    if not all(any(p.is_dir() for p in d.iterdir()) for d in found.values()):
        return None
    return found


def _listing(
    root: Path, val_fraction: float, test_fraction: float, seed: int, on_bad: str
) -> tuple[dict[str, list[str]], dict[str, np.ndarray], list[str], list[Path]]:
    """The files and labels of each split, the class names and the files left out: a plain
    folder split as the in-memory loader splits it, or the splits of a folder already split
    (a missing val split is carved from train, stratified, by `val_fraction`)."""
    from nas.data.folders import _class_dirs, _image_files

    folders = presplit_layout(root) or {"train": root}
    class_dirs = _class_dirs(folders["train"])
    names = [d.name for d in class_dirs]
    files: dict[str, list[Path]] = {}
    labels: dict[str, np.ndarray] = {}
    skipped: list[Path] = []
    for split, folder in folders.items():
        dirs = _class_dirs(folder)
        unknown = sorted({d.name for d in dirs} - set(names))
        if unknown:
            raise FileProblem(folder, f"has classes {unknown} that train lacks", _REMEDY_SPLIT)
        found, targets = _image_files(dirs)
        keep, bad = _readable(found, on_bad)
        skipped += bad
        files[split] = [found[i] for i in keep]
        labels[split] = np.asarray([names.index(dirs[targets[i]].name) for i in keep], np.int64)
    if not files["train"]:
        raise FileProblem(folders["train"], "holds no readable image", _REMEDY)
    carve = [s for s in ("val", "test") if s not in folders]
    if carve:
        idx = _stratified_split(
            labels["train"],
            val_fraction if "val" in carve else 0.0,
            test_fraction if "test" in carve else 0.0,
            seed,
        )
        pool, pool_labels = files["train"], labels["train"]
        for split in ("train", *carve):
            files[split] = [pool[i] for i in idx[split]]
            labels[split] = pool_labels[idx[split]]
    paths = {s: [str(f) for f in files[s]] for s in SPLITS}
    return paths, labels, names, skipped


def _check_settings(resolution: int, channels: int, on_bad: str, augment: str) -> None:
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int; got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (colour); got {channels!r}")
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {list(ON_BAD)}; got {on_bad!r}")
    resolve_augment(augment, resolution)


def _readable(files: Sequence[Path], on_bad: str) -> tuple[list[int], list[Path]]:
    """Indices of the files whose header PIL reads, and the files it cannot read."""
    from PIL import Image

    keep: list[int] = []
    bad: list[Path] = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018 - the header is parsed on open; size proves it
        except (OSError, ValueError) as exc:
            if on_bad == "error":
                raise FileProblem(f, f"cannot read image ({exc})", _REMEDY) from exc
            bad.append(f)
            continue
        keep.append(i)
    if bad:
        logger.warning(
            "skipped %d unreadable image(s), e.g. %s", len(bad), ", ".join(map(str, bad[:3]))
        )
    return keep, bad


def _estimate_stats(split: StreamedImages, n: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels in [0, 1] over `n` seeded images of `split`."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(split), generator=g)[: max(1, min(n, len(split)))].tolist()
    sums = np.zeros(split.channels)
    squares = np.zeros(split.channels)
    count = 0
    for i in pick:
        try:
            px = split.pixels(i).reshape(split.channels, -1).astype(np.float64) / 255.0
        except (OSError, ValueError):
            continue  # a file that opens but does not decode; the loaders deal with it
        sums += px.sum(1)
        squares += (px**2).sum(1)
        count += px.shape[1]
    if count == 0:
        raise ValueError("no image of the train split could be decoded to estimate mean and std")
    mean = sums / count
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0.0)), 1e-3)
    return mean.tolist(), std.tolist()

"""Datasets: the embedded default (augmented scikit-learn digits), image folders and CIFAR.

The default needs no download: scikit-learn ships 1,797 real 8x8 handwritten digits (the UCI
optdigits test set). They are upscaled and made harder with a fixed, seeded augmentation
(affine jitter, elastic distortion after Simard et al. 2003, coloured background and clutter,
noise) so that small and large architectures differ clearly in accuracy. Splits are made by
*source image*: the augmented copies of one digit never cross train / validation / test.

User data comes from a local folder in the ImageFolder layout (``root/<class>/<image>``) or in
one of the CIFAR-10 / CIFAR-100 layouts. CIFAR's python layout is a pickle; it is read with a
restricted unpickler that can only rebuild numpy arrays, never with plain ``pickle.load``.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, TensorDataset

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

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
DATASET_NAMES: tuple[str, ...] = ("digits",)
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
CACHE_ENV_VAR = "EDGE_NAS_CACHE"
# Part of the cache key, with the generator's source text (see _generator_fingerprint), so a
# changed generator never reuses stale cache files.
_DIGITS_VERSION = 1
# Samples generated per vectorised step; fixed so that the random stream (and so the bytes) do
# not depend on anything but the parameters.
_CHUNK = 1024
_LUMA = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------
# The dataset object
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The embedded default: augmented scikit-learn digits
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$EDGE_NAS_CACHE`` if set, else ``~/.cache/edge-nas``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-nas"


def load_embedded_digits(
    resolution: int = 32,
    channels: int = 3,
    copies_train: int = 8,
    copies_val: int = 5,
    copies_test: int = 5,
    seed: int = 0,
    split_seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ImageDataset:
    """The embedded default: scikit-learn's 1,797 digits, upscaled and augmented.

    The sources are split (stratified by class) with ``split_seed`` into train / val / test,
    then each source gets ``copies_<split>`` augmented copies drawn with ``seed``. The defaults
    give 8,624 / 1,350 / 2,245 images. The uint8 arrays are cached in ``cache_dir`` (default
    :func:`default_cache_dir`) keyed by every parameter, so a second call is a file read.
    """
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8 (pixels per side); got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (colour); got {channels!r}")
    for label, value in (
        ("copies_train", copies_train),
        ("copies_val", copies_val),
        ("copies_test", copies_test),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1; got {value!r}")
    _check_fractions(val_fraction, test_fraction)
    params: dict[str, Any] = {
        "version": _DIGITS_VERSION,
        "generator": _GENERATOR_FINGERPRINT,
        "resolution": resolution,
        "channels": channels,
        "copies": [copies_train, copies_val, copies_test],
        "seed": seed,
        "split_seed": split_seed,
        "fractions": [val_fraction, test_fraction],
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    arrays: dict[str, np.ndarray] | None = None
    cache_file: Path | None = None
    if use_cache:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_file = root / f"digits-r{resolution}-c{channels}-{key}.npz"
        arrays = _read_cache(cache_file, key)
    if arrays is None:
        arrays = _generate_digits(
            resolution,
            channels,
            (copies_train, copies_val, copies_test),
            seed,
            split_seed,
            val_fraction,
            test_fraction,
        )
        if cache_file is not None:
            _write_cache(cache_file, key, arrays)
    return _build_dataset(
        "digits",
        {s: arrays[f"x_{s}"] for s in SPLITS},
        {s: arrays[f"y_{s}"] for s in SPLITS},
        [str(d) for d in range(10)],
        {s: arrays[f"src_{s}"] for s in SPLITS},
    )


def _generator_fingerprint() -> str:
    """A hash of the generator's code: any edit to it changes the cache key."""
    funcs = (_generate_digits, _augment, _affine_coords, _sample, _random_colours)
    try:
        text = "".join(inspect.getsource(f) for f in funcs)
    except (OSError, TypeError):  # no source (a frozen build): the version alone must do
        return "no-source"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        if str(arrays.get("key", "")) != key:
            raise ValueError(f"key {arrays.get('key')!r} is not the expected {key!r}")
        for s in SPLITS:
            for prefix in ("x", "y", "src"):
                if f"{prefix}_{s}" not in arrays:
                    raise ValueError(f"array {prefix}_{s} is missing")
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable digits cache %s (%s); regenerating", path, exc)
        return None
    logger.info("loaded embedded digits from cache %s", path)
    return arrays


def _write_cache(path: Path, key: str, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees a half-written file.
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            payload: dict[str, Any] = {"key": np.array(key), **arrays}
            np.savez(fh, **payload)
        os.replace(tmp, path)
        logger.info("cached embedded digits at %s", path)
    except OSError as exc:  # a read-only home must not stop training
        logger.warning("could not write the digits cache %s (%s); continuing without", path, exc)


def _generate_digits(
    resolution: int,
    channels: int,
    copies: tuple[int, int, int],
    seed: int,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: only the default needs it

    digits = load_digits()
    raw = np.asarray(digits.images, dtype=np.float64) / 16.0  # 1797,8,8 in [0,1]
    labels = np.asarray(digits.target, dtype=np.int64)
    # Cubic upscaling with zeros outside, so strokes are smooth and fade at the frame's edge.
    factor = resolution / raw.shape[1]
    sources = np.stack(
        [ndimage.zoom(im, factor, order=3, mode="grid-constant", grid_mode=True) for im in raw]
    )  # 1797,R,R
    sources = np.clip(sources, 0.0, 1.0)
    split_idx = _stratified_split(labels, val_fraction, test_fraction, split_seed)
    streams = np.random.SeedSequence([seed, _DIGITS_VERSION]).spawn(len(SPLITS))
    out: dict[str, np.ndarray] = {}
    for split, n_copies, stream in zip(SPLITS, copies, streams, strict=True):
        idx = split_idx[split]
        rng = np.random.default_rng(stream)
        # Every copy of every source of this split; clutter is drawn from this split only.
        local = np.tile(np.arange(len(idx)), n_copies)
        pool = sources[idx]
        images = np.empty((len(local), 3, resolution, resolution), dtype=np.uint8)
        for start in range(0, len(local), _CHUNK):
            chunk = local[start : start + _CHUNK]
            images[start : start + len(chunk)] = _augment(pool, chunk, rng)
        if channels == 1:
            gray = np.tensordot(_LUMA, images.astype(np.float64), axes=([0], [1]))  # N,R,R
            images = np.rint(gray)[:, None].astype(np.uint8)
        out[f"x_{split}"] = images
        out[f"y_{split}"] = labels[idx][local]
        out[f"src_{split}"] = idx[local]
    logger.info(
        "generated embedded digits: %s",
        ", ".join(f"{s}={len(out[f'y_{s}'])}" for s in SPLITS),
    )
    return out


def _affine_coords(
    rng: np.random.Generator,
    n: int,
    size: int,
    scale: tuple[float, float],
    rotation_deg: float,
    shear: float,
    shift: tuple[float, float],
    fill: float,
) -> np.ndarray:
    """Per sample, the source (row, col) each output pixel reads: ``2 x n x R x R``.

    The image is shifted by a distance drawn from ``shift`` (a fraction of the size) in a
    uniformly random direction.
    """
    theta = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, n))
    s = rng.uniform(*scale, n)
    aspect = rng.uniform(0.85, 1.15, n)
    sh = rng.uniform(-shear, shear, n)
    direction = rng.uniform(0, 2 * np.pi, n)
    t = rng.uniform(*shift, n)[:, None] * size * np.stack([np.sin(direction), np.cos(direction)], 1)
    cos, sin = np.cos(theta), np.sin(theta)
    # Forward map A = rotation @ shear @ scale (acting on (row, col)); we need its inverse.
    a = np.empty((n, 2, 2))
    a[:, 0, 0] = s * aspect * cos
    a[:, 0, 1] = s / aspect * (sh * cos - sin)
    a[:, 1, 0] = s * aspect * sin
    a[:, 1, 1] = s / aspect * (sh * sin + cos)
    inv = np.linalg.inv(a) / fill  # n,2,2
    centre = (size - 1) / 2.0
    grid = np.mgrid[0:size, 0:size].astype(np.float64) - centre  # 2,R,R
    rel = grid[None] - t[:, :, None, None]  # n,2,R,R
    return np.einsum("nij,njhw->inhw", inv, rel) + centre  # 2,n,R,R


def _sample(sources: np.ndarray, which: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear sample ``sources[which]`` at ``coords`` (2 x n x R x R); zeros outside."""
    index = np.broadcast_to(which[:, None, None].astype(np.float64), coords.shape[1:])
    full = np.concatenate([index[None], coords], axis=0)  # 3,n,R,R
    # order=1 never mixes neighbouring images because the image index is always an integer.
    out: np.ndarray = ndimage.map_coordinates(
        sources, full, output=np.float32, order=1, mode="constant", cval=0.0
    )
    return out


def _random_colours(rng: np.random.Generator, n: int, luma: np.ndarray) -> np.ndarray:
    """Random hues with the given luminance (approximately, after clipping): ``n x 3``."""
    hue = rng.uniform(0.05, 1.0, (n, 3))
    return np.clip(hue * (luma / (hue @ _LUMA))[:, None], 0.0, 1.0)


def _augment(sources: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmented colour copies of ``sources[which]``: uint8 ``n x 3 x R x R``."""
    n, size = len(which), sources.shape[1]
    f32 = np.float32
    px = size / 28.0  # parameters below were set for MNIST's 28 px and scale with resolution
    # The digit: affine jitter plus an elastic displacement field (Simard et al. 2003).
    coords = _affine_coords(
        rng, n, size, scale=(0.75, 1.05), rotation_deg=20, shear=0.3, shift=(0.0, 0.1), fill=0.7
    )
    field = rng.uniform(-1.0, 1.0, (2, n, size, size)).astype(f32)
    field = ndimage.gaussian_filter(field, sigma=(0, 0, 4.0 * px, 4.0 * px), truncate=3.0)
    coords += field * (30.0 * px)
    digit = _sample(sources, which, coords)  # n,R,R

    # Clutter from this split only: a fragment of another digit cut by a random half-plane,
    # off-centre so that it rarely covers the digit itself (that would make labels ambiguous).
    other = rng.integers(0, len(sources), n)
    coords = _affine_coords(
        rng, n, size, scale=(0.4, 0.75), rotation_deg=180, shear=0.3, shift=(0.4, 0.55), fill=0.7
    )
    fragment = _sample(sources, other, coords)
    rows, cols = np.mgrid[0:size, 0:size].astype(f32)  # R,R each
    angle = rng.uniform(0, 2 * np.pi, n).astype(f32)
    point = rng.uniform(0, size, (n, 2)).astype(f32)
    side = (rows - point[:, 0, None, None]) * np.cos(angle)[:, None, None] + (
        cols - point[:, 1, None, None]
    ) * np.sin(angle)[:, None, None]  # n,R,R signed distance to the cut
    fragment *= np.clip(side / f32(1.5 * px) + f32(0.5), 0.0, 1.0)
    fragment *= (rng.uniform(0.5, 1.0, n) * (rng.uniform(size=n) < 0.6)).astype(f32)[:, None, None]

    # Strokes: up to two soft line segments; the first is drawn over the digit half the time.
    strokes = np.zeros((2, n, size, size), dtype=f32)
    for k in range(2):
        p0 = (rng.uniform(-0.1, 1.1, (n, 2)) * size).astype(f32)
        seg = (rng.normal(0.0, 0.35, (n, 2)) * size).astype(f32)
        width = (rng.uniform(0.6, 1.4, n) * px).astype(f32)
        on = (rng.uniform(0.5, 1.0, n) * (rng.uniform(size=n) < 0.5)).astype(f32)
        dr, dc = rows - p0[:, 0, None, None], cols - p0[:, 1, None, None]  # n,R,R each
        length2 = np.maximum((seg**2).sum(1), 1e-6)[:, None, None]
        tpos = np.clip((dr * seg[:, 0, None, None] + dc * seg[:, 1, None, None]) / length2, 0, 1)
        dist2 = (dr - tpos * seg[:, 0, None, None]) ** 2 + (dc - tpos * seg[:, 1, None, None]) ** 2
        strokes[k] = np.exp(-dist2 / (2 * width[:, None, None] ** 2)) * on[:, None, None]
    stroke_over = rng.uniform(size=n) < 0.5

    # Colours: any hue, but the digit keeps a luminance contrast with the background.
    bg_luma = rng.uniform(0.0, 1.0, n)
    gap = rng.uniform(0.3, 0.7, n)
    digit_luma = np.where(
        bg_luma < 0.5, np.minimum(bg_luma + gap, 1.0), np.maximum(bg_luma - gap, 0.0)
    )
    bg_col = _random_colours(rng, n, np.clip(bg_luma, 0.02, 1.0))
    digit_col = _random_colours(rng, n, np.clip(digit_luma, 0.02, 1.0))
    frag_col = _random_colours(rng, n, rng.uniform(0.02, 1.0, n))
    stroke_col = _random_colours(rng, n, rng.uniform(0.02, 1.0, n))
    # A linear shading across the background, as from uneven light.
    ramp_dir = rng.uniform(0, 2 * np.pi, n).astype(f32)
    ramp_amp = rng.uniform(-0.4, 0.4, n).astype(f32)
    ramp = (
        (rows / size - f32(0.5)) * np.cos(ramp_dir)[:, None, None]
        + (cols / size - f32(0.5)) * np.sin(ramp_dir)[:, None, None]
    ) * ramp_amp[:, None, None]  # n,R,R

    def over(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
        a = np.clip(alpha, 0.0, 1.0)[:, None]  # n,1,R,R
        return img + (colour.astype(f32)[:, :, None, None] - img) * a

    img = bg_col.astype(f32)[:, :, None, None] + ramp[:, None]  # n,3,R,R
    img = over(img, fragment, frag_col)
    img = over(img, np.maximum(strokes[1], strokes[0] * ~stroke_over[:, None, None]), stroke_col)
    img = over(img, digit, digit_col)
    img = over(img, strokes[0] * stroke_over[:, None, None], stroke_col)
    sigma = rng.uniform(0.02, 0.1, n).astype(f32)
    img += rng.standard_normal(img.shape, dtype=f32) * sigma[:, None, None, None]
    return np.rint(np.clip(img, 0.0, 1.0) * f32(255.0)).astype(np.uint8)


_GENERATOR_FINGERPRINT = _generator_fingerprint()


# --------------------------------------------------------------------------------------------
# A user's image folder
# --------------------------------------------------------------------------------------------


def load_image_folder(
    path: str | os.PathLike[str],
    resolution: int = 32,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    channels: int = 3,
) -> ImageDataset:
    """Images in ``path/<class name>/<image>`` (torchvision's ImageFolder layout).

    Classes are the sub-folders in sorted order. Each image is resized so its shorter side is
    ``resolution``, then centre-cropped to a square. The split is stratified by class and seeded;
    it holds the whole folder in memory, which suits the small data sets this is meant for.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser()
    _check_dir(root, "image folder")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int; got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (colour); got {channels!r}")
    _check_fractions(val_fraction, test_fraction)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = sorted(p.name for p in root.iterdir() if p.is_file())[:5]
        raise ValueError(
            f"image folder {root} has no class sub-folders; the layout must be "
            f"<root>/<class name>/<image> with extensions {', '.join(IMAGE_EXTENSIONS)}"
            + (f" (found loose files such as {loose})" if loose else "")
        )
    files: list[Path] = []
    targets: list[int] = []
    for cls, d in enumerate(class_dirs):
        found = sorted(
            p
            for p in d.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            others = sorted(p.name for p in d.iterdir())[:5]
            raise ValueError(
                f"class folder {d} holds no images; an image must have one of the extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}" + (f" (found {others})" if others else "")
            )
        files += found
        targets += [cls] * len(found)
    mode = "RGB" if channels == 3 else "L"
    images = np.empty((len(files), channels, resolution, resolution), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as opened:
                im = opened.convert(mode)
            w, h = im.size
            scale = resolution / min(w, h)
            nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {file}: {exc}") from exc
        images[i] = arr.reshape(resolution, resolution, channels).transpose(2, 0, 1)
    labels = np.asarray(targets, dtype=np.int64)
    idx = _stratified_split(labels, val_fraction, test_fraction, seed)
    logger.info(
        "loaded image folder %s: %d classes, %s",
        root,
        len(class_dirs),
        ", ".join(f"{s}={len(idx[s])}" for s in SPLITS),
    )
    return _build_dataset(
        root.name or str(root),
        {s: images[idx[s]] for s in SPLITS},
        {s: labels[idx[s]] for s in SPLITS},
        [d.name for d in class_dirs],
        idx,
    )


def _check_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise FileNotFoundError(f"{what} path {root} does not exist; give an existing directory")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} path {root} is a file; it must be a directory")


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 from a local copy
# --------------------------------------------------------------------------------------------


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
        raise ValueError(f"{path} is not a readable CIFAR pickle: {exc}") from exc


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
        raise ValueError(
            f"{path} must hold a dict with keys b'data' and {label_key!r}; found {keys}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072) (32x32 RGB, channel-major); "
            f"found {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: {label_key!r} must hold {data.shape[0]} integer labels; "
            f"found {labels.dtype} {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _meta_names(path: Path, key: bytes) -> list[str]:
    meta = restricted_pickle_load(path)
    if not isinstance(meta, dict) or key not in meta:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} must hold a dict with key {key!r}; found {keys}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _text_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_cifar_bin(
    path: Path, label_bytes: int, label_offset: int
) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3 * 32 * 32
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path} must hold whole records of {record} bytes ({label_bytes} label byte(s) then "
            f"3072 pixel bytes); its size is {raw.size} bytes"
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


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


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

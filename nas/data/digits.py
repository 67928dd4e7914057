"""The embedded default data set: scikit-learn's digits, upscaled and augmented, and its cache.

The default needs no download: scikit-learn ships 1,797 real 8x8 handwritten digits (the UCI
optdigits test set). They are upscaled and made harder with a fixed, seeded augmentation
(affine jitter, elastic distortion after Simard et al. 2003, coloured background and clutter,
noise) so that small and large architectures differ clearly in accuracy. Splits are made by
*source image*: the augmented copies of one digit never cross train / validation / test.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nas.data.dataset import (
    SPLITS,
    ImageDataset,
    _build_dataset,
    _check_fractions,
    _stratified_split,
)

__all__ = ["CACHE_ENV_VAR", "default_cache_dir", "load_embedded_digits"]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "EDGE_NAS_CACHE"
# Part of the cache key, with the generator's source text (see _generator_fingerprint), so a
# changed generator never reuses stale cache files.
_DIGITS_VERSION = 1
# Samples generated per vectorised step; fixed so that the random stream (and so the bytes) do
# not depend on anything but the parameters.
_CHUNK = 1024
_LUMA = np.array([0.299, 0.587, 0.114])


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

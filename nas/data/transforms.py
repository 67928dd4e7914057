"""Train-time augmentation and eval transforms for streamed images, seeded per sample.

torchvision's transforms are the field's reference (random resized crop and flip for
ImageNet-like data, He et al.'s crop with 4-pixel padding and flip for 32 px data), but the
torchvision on PyPI does not import beside this project's torch, and kornia works on batches of
tensors already decoded. These few transforms are written with PIL and numpy instead, following
torchvision's definitions (RandomResizedCrop's scale (0.08, 1), ratio (3/4, 4/3), ten tries and
centre-crop fallback), and take their randomness from a generator seeded by
(seed, epoch, sample index): a sample's augmentation does not depend on which worker decodes it,
nor on how many workers there are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "AUGMENTATIONS",
    "augment_rng",
    "eval_transform",
    "pad_crop",
    "resolve_augment",
    "train_transform",
]

#: the train-time augmentations: none, crop with padding + flip (32 px data), random resized
#: crop + flip (ImageNet-like data); "auto" picks by resolution (`resolve_augment`)
AUGMENTATIONS: tuple[str, ...] = ("none", "pad-crop-flip", "resized-crop-flip")


def resolve_augment(augment: str, resolution: int) -> str:
    """The augmentation `augment` names; "auto" is pad-crop-flip up to 32 px, else
    resized-crop-flip."""
    if augment == "auto":
        return "pad-crop-flip" if resolution <= 32 else "resized-crop-flip"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be 'auto' or one of {list(AUGMENTATIONS)}; got {augment!r}")
    return augment


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch: a function of the three numbers
    only (not of the worker, the worker count or the order samples are drawn in)."""
    return np.random.default_rng((int(seed), int(epoch), int(index)))


def _resize_shorter(im: Any, size: int) -> Any:
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return im.resize((nw, nh), Image.Resampling.BILINEAR)


def _to_chw(im: Any, channels: int) -> np.ndarray:
    arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(
        arr.reshape(arr.shape[0], arr.shape[1], channels).transpose(2, 0, 1)
    )  # C x H x W


def eval_transform(im: Any, resolution: int, channels: int) -> np.ndarray:
    """Shorter side to `resolution`, centre crop: uint8 C x H x W (as `load_image_folder`)."""
    im = _resize_shorter(im, resolution)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return _to_chw(im.crop((left, top, left + resolution, top + resolution)), channels)


def _resized_crop_box(
    w: int, h: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, width, height)."""
    area = w * h
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    # fallback: the centre crop of the whole image, its aspect ratio clamped to the range
    in_ratio = w / h
    if in_ratio < 3 / 4:
        cw, ch = w, round(w / (3 / 4))
    elif in_ratio > 4 / 3:
        ch, cw = h, round(h * (4 / 3))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def train_transform(
    im: Any, resolution: int, channels: int, augment: str, rng: np.random.Generator
) -> np.ndarray:
    """One augmented view of a PIL image: uint8 C x `resolution` x `resolution`."""
    from PIL import Image

    if augment == "none":
        return eval_transform(im, resolution, channels)
    if augment == "resized-crop-flip":
        left, top, cw, ch = _resized_crop_box(im.size[0], im.size[1], rng)
        im = im.resize(
            (resolution, resolution),
            Image.Resampling.BILINEAR,
            box=(left, top, left + cw, top + ch),
        )
        arr = _to_chw(im, channels)
    elif augment == "pad-crop-flip":
        arr = pad_crop(eval_transform(im, resolution, channels), rng)
    else:
        raise ValueError(f"unknown augmentation {augment!r}; one of {list(AUGMENTATIONS)}")
    if rng.random() < 0.5:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def pad_crop(arr: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """A random `H x W` crop of `arr` (C x H x W) zero-padded by `padding` on every side."""
    _, h, w = arr.shape
    padded = np.pad(arr, ((0, 0), (padding, padding), (padding, padding)))
    top, left = int(rng.integers(0, 2 * padding + 1)), int(rng.integers(0, 2 * padding + 1))
    return padded[:, top : top + h, left : left + w]

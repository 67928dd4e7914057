"""A domain-shift task on a dataset's splits: a target domain the source model never saw, a few
labelled target shots per class for adaptation and a target test set, drawn from disjoint
source images that source training never used.

The embedded digits carry no writer ids, so the shift is synthetic and seeded: the target
domain re-renders each image under one of :data:`SHIFTS` (a colour inversion, a rotation
regime, a stroke-thinning blur). Shots come from the ``val`` split, the target test set from
the ``test`` split, and the source model trains on ``train``: three disjoint sets of source
images (the datasets' ``source_ids`` say so, and :attr:`ShiftTask.counts` reports them). An
image folder of the target domain works the same way: pass its dataset with ``shift="none"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nas.data import ImageDataset

__all__ = ["SHIFTS", "ShiftTask", "apply_shift", "make_shift_task"]


def _invert(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return 1.0 - pixels  # dark strokes on a light ground, every colour its complement


def _rotate(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # a quarter turn either way, drawn per image: the strokes' directions all change
    turns = torch.randint(0, 2, (pixels.shape[0],), generator=gen) * 2 + 1
    out = pixels.clone()
    for k in (1, 3):
        sel = turns == k
        out[sel] = torch.rot90(pixels[sel], k, dims=(2, 3))
    return out


def _invert_rotate(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _rotate(_invert(pixels, gen), gen)


SHIFTS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "invert": _invert,
    "rotate": _rotate,
    "invert_rotate": _invert_rotate,
}


def apply_shift(
    images: torch.Tensor, data: ImageDataset, shift: str, seed: int = 0
) -> torch.Tensor:
    """Normalised `images` of `data` re-rendered in the target domain `shift` (normalised the
    same way: the deployed model's preprocessing does not change with the domain)."""
    if shift == "none":
        return images
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid: {['none', *SHIFTS]}")
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    pixels = (images * std + mean).clamp(0.0, 1.0)
    return (SHIFTS[shift](pixels, gen) - mean) / std


@dataclass(frozen=True)
class ShiftTask:
    """Adaptation shots and a target test set in the target domain, with their source groups."""

    shift: str
    shots_x: torch.Tensor
    shots_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_groups: np.ndarray  # the source image of each test image (for accuracy intervals)
    counts: dict[str, int]


def _pick_shots(
    labels: np.ndarray, groups: np.ndarray, shots: int, rng: np.random.Generator
) -> np.ndarray:
    """`shots` images per class, as many source images as the split has (one copy of each
    first, then further copies of them)."""
    picked: list[int] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < shots:
            raise ValueError(
                f"class {cls} has {len(idx)} images in the shots' split, fewer than the "
                f"{shots} shots asked for"
            )
        _, first = np.unique(groups[idx], return_index=True)
        rest = np.setdiff1d(np.arange(len(idx)), first)
        picked += list(idx[np.concatenate([first, rest])[:shots]])
    return np.sort(np.asarray(picked, dtype=np.int64))


def make_shift_task(
    data: ImageDataset,
    shift: str = "rotate",
    shots: int = 10,
    seed: int = 0,
    max_test: int | None = None,
) -> ShiftTask:
    """The task (see the module docstring): `shots` per class from ``val``, the target test set
    from ``test`` (the first `max_test` of it when given), both in domain `shift`."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1 per class, got {shots}")
    rng = np.random.default_rng(seed)
    val_x, val_y = data.val.tensors
    val_groups = data.groups("val")
    idx = _pick_shots(val_y.numpy(), val_groups, shots, rng)
    test_x, test_y = data.test.tensors
    test_groups = data.groups("test")
    if max_test is not None:
        test_x, test_y, test_groups = test_x[:max_test], test_y[:max_test], test_groups[:max_test]
    counts = {
        "source_train_images": len(data.train),
        "source_train_sources": len(np.unique(data.groups("train"))),
        "shots_images": len(idx),
        "shots_sources": len(np.unique(val_groups[idx])),
        "test_images": len(test_y),
        "test_sources": len(np.unique(test_groups)),
    }
    return ShiftTask(
        shift=shift,
        shots_x=apply_shift(val_x[idx], data, shift, seed),
        shots_y=val_y[idx],
        test_x=apply_shift(test_x, data, shift, seed + 1),
        test_y=test_y,
        test_groups=test_groups,
        counts=counts,
    )

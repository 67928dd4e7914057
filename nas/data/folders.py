"""A user's image folder in torchvision's ImageFolder layout (``root/<class>/<image>``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nas.core.files import FileProblem
from nas.data.dataset import (
    SPLITS,
    ImageDataset,
    _build_dataset,
    _check_dir,
    _check_fractions,
    _stratified_split,
)

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

logger = logging.getLogger(__name__)

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
    class_dirs = _class_dirs(root)
    files, targets = _image_files(class_dirs)
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
            raise FileProblem(
                file, f"cannot read image ({exc})", "replace it with a readable image, or delete it"
            ) from exc
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


def _class_dirs(root: Path) -> list[Path]:
    """The class sub-folders of an image folder, sorted; a FileProblem when there are none."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = sorted(p.name for p in root.iterdir() if p.is_file())[:5]
        raise FileProblem(
            root,
            "(an image folder) has no class sub-folders"
            + (f" (found loose files such as {loose})" if loose else ""),
            f"the layout must be <root>/<class name>/<image> with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}",
        )
    return class_dirs


def _image_files(class_dirs: list[Path]) -> tuple[list[Path], list[int]]:
    """The image files of each class folder, in order, and their class indices."""
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
            raise FileProblem(
                d,
                "(a class folder) holds no images" + (f" (found {others})" if others else ""),
                f"add images with one of the extensions {', '.join(IMAGE_EXTENSIONS)}, or "
                "remove the folder",
            )
        files += found
        targets += [cls] * len(found)
    return files, targets

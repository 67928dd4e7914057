"""Accuracy of subnets with inherited weights: export, recalibrate batch norm, score; cached.

As Once-for-All evaluates its subnets (Cai et al., ICLR 2020): each arch is exported from the
supernet as a standalone copy, its batch-norm statistics are re-estimated on a fixed set of
training images (the supernet's shared statistics belong to no single subnet), and it is
scored on held-out images. The supernet itself is never changed. Results are cached per
(checkpoint fingerprint, evaluation settings, arch key), in memory and optionally in a JSON-lines
file, so a search that revisits an arch, or a second process, pays nothing. The file is
append-only (`nas.core.files.append_lines`): a record cut short by a kill is skipped when read
and dropped before the next append, and its arch is scored again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from nas.core.elastic import Supernet, resize_to
from nas.core.files import append_lines, read_lines
from nas.data import StreamedImages, StreamLoader, collate_images
from nas.supernet.bn import recalibrate_bn
from nas.supernet.device import Precision, execution, fits_memory

logger = logging.getLogger(__name__)

__all__ = [
    "SubnetEvaluator",
    "accuracy",
    "correct_mask",
    "evaluate_archs",
    "state_fingerprint",
]


def _as_tensors(data: Any, what: str) -> tuple[Tensor, Tensor]:
    """(images N x C x H x W, labels N) from a TensorDataset, a Dataset or an (x, y) pair."""
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return data[0], data[1]
    if isinstance(data, TensorDataset):
        return data.tensors[0], data.tensors[1]
    if isinstance(data, StreamedImages):
        return _decoded(data)
    if isinstance(data, Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])
    raise TypeError(
        f"{what} must be a TensorDataset, a Dataset of (image, label) or an (images, labels) "
        f"pair of tensors, got {type(data).__name__}"
    )


def _decoded(
    split: StreamedImages, indices: Sequence[int] | None = None, workers: int = 2
) -> tuple[Tensor, Tensor]:
    """A streamed split (or the images `indices` of it, in that order) decoded by DataLoader
    workers (a bad image skipped or named, as the split's `on_bad` says): images
    N x C x H x W, labels N."""
    part = split if indices is None else Subset(split, list(indices))
    loader = DataLoader(part, batch_size=256, num_workers=workers, collate_fn=collate_images)
    batches = list(StreamLoader(loader, split.on_bad))
    if not batches:
        raise ValueError(f"no image of the streamed split ({len(split)} files) could be decoded")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _tensor_digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def state_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's state dict (names, shapes, values): names a checkpoint."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(_tensor_digest(t).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def correct_mask(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 500,
    input_size: Sequence[int] | None = None,
) -> np.ndarray:
    """Per image, whether ``model`` (eval mode) predicts its label: bool ``N``.

    ``correct_mask(...).mean()`` is :func:`accuracy`. The model's train / eval mode is restored.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"need as many labels as images, and at least one; got {len(images)} images and "
            f"{len(labels)} labels"
        )
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)  # B x C x H x W
            if input_size is not None:
                x = resize_to(x, input_size)
            pred = model(x).argmax(1).cpu()  # B
            out.append((pred == labels[i : i + batch_size]).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 500,
    input_size: Sequence[int] | None = None,
) -> float:
    """Top-1 accuracy of `model` in eval mode on (images N x C x H x W, labels N), in [0, 1].

    The model's train / eval mode is restored afterwards.
    """
    return float(correct_mask(model, images, labels, batch_size, input_size).mean())


class SubnetEvaluator:
    """Scores archs of one supernet with inherited weights after BN recalibration.

    `calib_data` gives the recalibration images (a fixed, seeded subset of `calib_images`,
    the same for every arch, in batches of `calib_batch_size`); `eval_data` the images scored.
    `cache_path` (a .jsonl file) persists results; `checkpoint_id` names the weights (default:
    a fingerprint of the supernet's state, so retrained weights never hit old entries).
    `device` (default: where the supernet is) is where each exported subnet is recalibrated
    and scored, the recalibration batches held there; `precision` (fp32, bf16, fp16) runs both
    under autocast, and is part of the cache's key (the device is not: where a subnet is scored
    is not what it scores).
    """

    def __init__(
        self,
        supernet: Supernet,
        calib_data: Any,
        eval_data: Any,
        *,
        calib_images: int = 512,
        calib_batch_size: int = 128,
        batch_size: int = 500,
        seed: int = 0,
        cache_path: str | os.PathLike[str] | None = None,
        checkpoint_id: str | None = None,
        device: str | torch.device | None = None,
        precision: str | Precision = "fp32",
    ) -> None:
        if not isinstance(supernet, Supernet):
            raise TypeError(
                f"supernet must be a nas.core.elastic.Supernet, got {type(supernet).__name__}"
            )
        for name, value in (
            ("calib_images", calib_images),
            ("calib_batch_size", calib_batch_size),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.supernet = supernet
        if isinstance(precision, Precision):
            self.precision = precision
        else:
            first = next(iter(supernet.parameters()), None)
            here = first.device if first is not None else torch.device("cpu")
            self.precision = execution(here if device is None else device, precision)
        g = torch.Generator().manual_seed(seed)
        if isinstance(calib_data, StreamedImages):  # decode only the images picked
            n = len(calib_data)
            pick = torch.randperm(n, generator=g)[: min(calib_images, n)]
            picked, _ = _decoded(calib_data, pick.tolist())
        else:
            cx, _ = _as_tensors(calib_data, "calib_data")
            pick = torch.randperm(len(cx), generator=g)[: min(calib_images, len(cx))]
            picked = cx[pick]
        self.eval_x, self.eval_y = _as_tensors(eval_data, "eval_data")
        # each B x C x H x W, held on the device: every arch recalibrates on the same batches
        self.calib_batches = [self.precision.to(b) for b in picked.split(calib_batch_size)]
        self.batch_size = batch_size
        self.checkpoint_id = checkpoint_id or state_fingerprint(supernet)
        settings: dict[str, Any] = {
            "calib": _tensor_digest(*self.calib_batches),
            "eval": _tensor_digest(self.eval_x, self.eval_y),
            "calib_batch_size": calib_batch_size,
        }
        if self.precision.name != "fp32":  # fp32 keeps the key caches written before it had one
            settings["precision"] = self.precision.name
        self.settings_id = hashlib.sha256(
            json.dumps(settings, sort_keys=True).encode()
        ).hexdigest()[:16]
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.exists():
            for line in read_lines(self.cache_path):  # a cut last line is left out, and said
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # an unreadable whole line: its arch is scored again
                if (
                    rec.get("checkpoint") == self.checkpoint_id
                    and rec.get("settings") == self.settings_id
                ):
                    self._cache[rec["arch"]] = float(rec["accuracy"])
        self.hits = 0
        self.misses = 0

    def cached(self, arch: Mapping[str, Any]) -> float | None:
        return self._cache.get(self.supernet.space.key(arch))

    def evaluate_one(self, arch: Mapping[str, Any]) -> float:
        """Accuracy in [0, 1] of `arch` with inherited, BN-recalibrated weights."""
        return self.evaluate([arch])[0]

    def evaluate(self, archs: Sequence[Mapping[str, Any]], progress: bool = False) -> list[float]:
        """Accuracies of `archs` (in order); each distinct arch key is evaluated at most once."""
        space = self.supernet.space
        keys = [space.key(a) for a in archs]
        todo: dict[str, Mapping[str, Any]] = {}
        for k, a in zip(keys, archs, strict=True):
            if k in self._cache:
                self.hits += 1
            elif k not in todo:
                todo[k] = a
        for k, a in tqdm(todo.items(), disable=not progress, desc="evaluate", unit="arch"):
            acc = self._score(a)
            self._cache[k] = acc
            self.misses += 1
            if self.cache_path is not None:
                rec = {
                    "checkpoint": self.checkpoint_id,
                    "settings": self.settings_id,
                    "arch": k,
                    "accuracy": acc,
                }
                append_lines(self.cache_path, [json.dumps(rec)])
        return [self._cache[k] for k in keys]

    def _score(self, arch: Mapping[str, Any]) -> float:
        space = self.supernet.space
        size = space.input_shape(arch)[1:]
        model = self.supernet.export(arch).to(self.precision.device)
        biggest = max(self.batch_size, max(len(b) for b in self.calib_batches))
        remedy = "Lower the evaluation's batch_size and calib_batch_size, or use precision bf16"
        with fits_memory(self.precision.device, biggest, remedy=remedy), self.precision.autocast():
            recalibrate_bn(model, self.calib_batches, input_size=size)
            acc = accuracy(model, self.eval_x, self.eval_y, self.batch_size, input_size=size)
        logger.debug("%s: %.4f", space.key(arch), acc)
        return acc


def evaluate_archs(
    supernet: Supernet,
    archs: Sequence[Mapping[str, Any]],
    calib_data: Any,
    eval_data: Any,
    **kwargs: Any,
) -> np.ndarray:
    """Accuracies (in [0, 1]) of `archs` with inherited weights; kwargs go to SubnetEvaluator."""
    progress = bool(kwargs.pop("progress", False))
    evaluator = SubnetEvaluator(supernet, calib_data, eval_data, **kwargs)
    return np.asarray(evaluator.evaluate(archs, progress=progress), dtype=np.float64)

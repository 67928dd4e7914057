"""What every artifact runner is (:class:`ArtifactRunner`) and the helpers they share.

Artifacts are exported at batch 1 (``torch.export`` fixes every dimension): the deployment shape
and the one latency is measured at. Each format has a runner that executes the file in its own
runtime (:mod:`~nas.backends.executorch`, :mod:`~nas.backends.onnx`, :mod:`~nas.backends.litert`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

from nas.core.files import FileProblem, check_file, write_bytes_atomic

__all__ = ["ARTIFACT_SUFFIXES", "ArtifactRunner"]

ARTIFACT_SUFFIXES = {".pte": "executorch-xnnpack", ".onnx": "onnxruntime", ".tflite": "litert"}


class ArtifactRunner(Protocol):
    """Runs one artifact file in its runtime."""

    path: Path
    runtime: str
    input_shape: tuple[int, ...]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits for ``x`` (shape ``input_shape``)."""
        ...

    def __call__(self) -> None:
        """One inference on a stored input: the thing a latency measurement times."""
        ...


def _check(runner: ArtifactRunner, x: torch.Tensor) -> torch.Tensor:
    if tuple(x.shape) != runner.input_shape:
        raise ValueError(
            f"{runner.path.name} was exported for input shape {runner.input_shape}; got "
            f"{tuple(x.shape)} (export fixes every dimension, the batch included)"
        )
    return x.detach().to(torch.float32).contiguous()


_REDO = "delete it to export it again (a compress run redoes its export step), or name another file"


def _artifact_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` when it names a non-empty file; else a FileProblem saying what is wrong."""
    if not (Path(path).exists() or Path(path).is_symlink()):
        raise FileProblem(
            path, f"is missing (expected {what})", "export it first, or name another file"
        )
    return check_file(path, what, _REDO)


def _unloadable(path: Path, what: str, err: BaseException) -> FileProblem:
    """The FileProblem for an artifact its runtime cannot load: cut short, from another version
    of the runtime, or a file of another kind under this suffix."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return FileProblem(
        path,
        f"cannot be loaded as {what} ({first}): it is cut short, of another runtime version, "
        "or a file of another kind",
        _REDO,
    )


def _write(path: Path, data: bytes) -> Path:
    """Write an artifact whole or not at all, making its folder if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, data)

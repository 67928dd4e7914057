"""Opening an artifact's runner, checking it against the model it came from, and timing it.

:func:`check_parity` runs a runner over a test set and compares it with the model the artifact
came from (top-1 agreement and largest logit difference), so a quantization or export bug cannot
hide behind an accuracy measured in PyTorch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.backends.artifact import ArtifactRunner
from nas.backends.eager import predict_logits
from nas.backends.executorch import PteRunner
from nas.backends.litert import TfliteRunner
from nas.backends.onnx import OnnxRunner

__all__ = ["ParityReport", "check_parity", "min_latency_ms", "open_runner"]


def open_runner(
    path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
) -> ArtifactRunner:
    """The runner for an artifact, chosen by its suffix (.pte, .onnx, .tflite)."""
    suffix = Path(path).suffix
    runners: dict[str, Callable[..., ArtifactRunner]] = {
        ".pte": PteRunner,
        ".onnx": OnnxRunner,
        ".tflite": TfliteRunner,
    }
    if suffix not in runners:
        raise ValueError(
            f"no runner for {str(path)!r}: the suffix must be one of {sorted(runners)}"
        )
    return runners[suffix](path, input_shape, threads)


@dataclass(frozen=True)
class ParityReport:
    """An artifact run in its runtime over a test set, against the model it came from."""

    n_images: int
    top1_agreement: float
    max_abs_logit_diff: float
    runtime_accuracy: float
    reference_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def check_parity(
    runner: ArtifactRunner,
    reference: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    reference_batch_size: int = 256,
    reference_logits: torch.Tensor | None = None,
) -> ParityReport:
    """Run ``runner`` on every image (at its exported batch size) and ``reference`` (the model
    the artifact came from) in PyTorch; compare their top-1 and logits. ``reference_logits``,
    the reference's logits on ``images`` computed before, saves running it again when several
    artifacts come from one model."""
    batch = runner.input_shape[0]
    n = (len(images) // batch) * batch
    if n == 0:
        raise ValueError(
            f"check_parity needs at least {batch} images (the artifact's batch size); got "
            f"{len(images)}"
        )
    outs = [runner.run(images[i : i + batch]) for i in range(0, n, batch)]
    got = torch.cat(outs).float()  # n x classes
    if reference_logits is not None and len(reference_logits) >= n:
        ref = reference_logits[:n].float()
    else:
        ref = predict_logits(reference, images[:n], reference_batch_size)  # n x classes
    if got.shape != ref.shape:
        raise RuntimeError(
            f"{runner.path.name} returns logits of shape {tuple(got.shape)}; the reference model "
            f"returns {tuple(ref.shape)}"
        )
    y = labels[:n]
    return ParityReport(
        n_images=n,
        top1_agreement=float((got.argmax(1) == ref.argmax(1)).float().mean()),
        max_abs_logit_diff=float((got - ref).abs().max()),
        runtime_accuracy=float((got.argmax(1) == y).float().mean()),
        reference_accuracy=float((ref.argmax(1) == y).float().mean()),
    )


def min_latency_ms(
    fn: Callable[[], object], *, warmup: int = 10, min_runs: int = 50, max_s: float = 2.0
) -> float:
    """A simple timing: ``warmup`` runs discarded, then at least ``min_runs`` runs (more while
    under ``max_s`` seconds), the fastest in ms: the headline figure of the project's protocol
    (``latency_models.measure``, whose docstring says why the minimum and not the median), which
    callers with that package at hand should use instead."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < max_s:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= 100_000:
            break
    return float(np.min(samples))

"""The export step: every model of the chain as deployable artifacts, checked and timed.

Artifacts (:mod:`nas.backends`: ExecuTorch ``.pte`` lowered to XNNPACK, ONNX, ONNX Runtime's
static int8, LiteRT) are made at batch 1, run over the test set in their runtime against the
model they came from (parity: top-1 agreement and largest logit difference), and timed there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.backends import (
    ArtifactRunner,
    ParityReport,
    check_parity,
    export_onnx,
    export_pte,
    export_tflite,
    has_vnni,
    open_runner,
    quantize_onnx_static,
    set_executorch_threads,
)
from nas.compress.distill import predict_logits
from nas.compress.latency import LatencyDevice
from nas.compress.report import ReportRow, _size_ratios
from nas.compress.state import _Chain

__all__: list[str] = []

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """One artifact to make: the step of its model, its label, format and file, the model it
    must agree with, and how to make it."""

    source: str
    label: str
    fmt: str
    path: Path
    reference: nn.Module
    make: Callable[[], Path]


def _export_step(chain: _Chain, d: Path) -> list[ReportRow]:
    """Export the chain's models (``config.export``), check each artifact against its model in
    its runtime, and time it on the devices of that runtime."""
    ex = chain.cfg.export
    example = torch.zeros((1, *chain.shape))  # 1 x C x H x W: the deployment shape
    test_x, test_y = chain.data.test.tensors[:2]
    if ex.parity_images is not None:
        test_x, test_y = test_x[: ex.parity_images], test_y[: ex.parity_images]
    jobs = _export_jobs(chain, d, example)
    rows: list[ReportRow] = []
    threads_before = None
    reference_logits: dict[int, torch.Tensor] = {}  # one PyTorch pass per source model
    try:
        for job in jobs:
            t0 = time.perf_counter()
            job.make()
            export_s = time.perf_counter() - t0
            chain.artifacts.append(job.path)
            if job.fmt == "pte" and threads_before is None:
                threads_before = set_executorch_threads(ex.threads)
            runner = open_runner(job.path, example.shape, ex.threads)
            if id(job.reference) not in reference_logits:
                reference_logits[id(job.reference)] = predict_logits(job.reference, test_x)
            parity = check_parity(
                runner,
                job.reference,
                test_x,
                test_y,
                reference_logits=reference_logits[id(job.reference)],
            )
            latency = _time_artifact(chain, runner, ex.threads) if ex.time_artifacts else {}
            rows.append(_artifact_row(chain, job, parity, latency, export_s))
    finally:
        if threads_before is not None:
            set_executorch_threads(threads_before)
    _size_ratios(rows, {k: v[2] for k, v in chain.int8.items()}, d)
    return rows


def _export_jobs(chain: _Chain, d: Path, example: torch.Tensor) -> list[_Job]:
    """The artifacts to make, in order: of each fp32 model its ``.pte``, ONNX (and ONNX
    Runtime's static int8 of it) and ``.tflite``; of each int8 model its ``.pte`` and ONNX."""
    ex = chain.cfg.export
    fp32_items = list(chain.fp32.items())
    int8_items = list(chain.int8.items())
    if ex.models == "final":
        fp32_items, int8_items = fp32_items[-1:], int8_items[-1:]
    calib = list(chain.calibration.split(1))
    jobs: list[_Job] = []
    for name, model in fp32_items:
        stem = "pruned" if name == "prune" else name
        if "pte" in ex.formats:
            p = d / f"{stem}-fp32.pte"
            jobs.append(_Job(name, "fp32", "pte", p, model, _bind(export_pte, model, example, p)))
        if "onnx" in ex.formats:
            p = d / f"{stem}-fp32.onnx"
            jobs.append(_Job(name, "fp32", "onnx", p, model, _bind(export_onnx, model, example, p)))
            if ex.ort_int8:
                q = d / f"{stem}-int8-ort.onnx"
                make = _bind(quantize_onnx_static, p, q, calib)
                jobs.append(_Job(name, "int8 (ORT static)", "onnx", q, model, make))
        if "tflite" in ex.formats:
            p = d / f"{stem}-fp32.tflite"
            make = _bind(export_tflite, model, example, p)
            jobs.append(_Job(name, "fp32", "tflite", p, model, make))
    for name, (converted, _, _) in int8_items:
        for fmt, export in (("pte", export_pte), ("onnx", export_onnx)):
            if fmt in ex.formats:
                p = d / f"{name}-int8.{fmt}"
                make = _bind(export, converted, example, p)
                jobs.append(_Job(name, f"int8 ({name.upper()})", fmt, p, converted, make))
    return jobs


def _artifact_row(
    chain: _Chain,
    job: _Job,
    parity: ParityReport,
    latency: dict[str, float | None],
    export_s: float,
) -> ReportRow:
    """The report row of an artifact: its parity, size and latencies, and its model's MACs."""
    src_row = chain.baseline_row(job.source)
    macs, params = (src_row.macs, src_row.params) if src_row else (None, None)
    size = job.path.stat().st_size
    log.info(
        "%s: accuracy %.4f, agreement %.4f, max |dlogit| %.3g, %d bytes",
        job.path.name,
        parity.runtime_accuracy,
        parity.top1_agreement,
        parity.max_abs_logit_diff,
        size,
    )
    return ReportRow(
        step="export",
        model=job.label
        if job.label != "fp32"
        else ("pruned fp32" if job.source == "prune" else "fp32"),
        dtype="int8" if job.label.startswith("int8") else "fp32",
        format=job.fmt,
        accuracy=parity.runtime_accuracy,
        macs=macs,
        params=params,
        size_bytes=size,
        latency_ms=latency,
        top1_agreement=parity.top1_agreement,
        max_abs_logit_diff=parity.max_abs_logit_diff,
        source=job.source,
        file=job.path.name,
        notes=f"{parity.n_images} test images; built in {export_s:.1f} s"
        + _saturation_note(chain, job.fmt, job.label, parity.top1_agreement),
    )


def _saturation_note(chain: _Chain, fmt: str, dtype_label: str, agreement: float) -> str:
    """Why an int8 ONNX artifact may disagree with its model on this host, and the cure."""
    if (
        fmt != "onnx"
        or dtype_label not in ("int8 (QAT)", "int8 (PTQ)")  # ORT static reduces its range
        or agreement >= 0.99
        or chain.cfg.qat.weight_bits != 8
        or has_vnni()
    ):
        return ""
    return (
        "; this CPU lacks VNNI, where ONNX Runtime's int8 kernels saturate with full-range "
        "weights: qat.weight_bits=7 avoids it"
    )


def _time_artifact(chain: _Chain, runner: ArtifactRunner, threads: int) -> dict[str, float | None]:
    """The artifact of ``runner`` (opened with ``threads`` threads) timed with ``chain.timer`` on
    each of the chain's devices whose runtime runs it, with that device's threads; by device
    name, in the devices' order."""
    devices = [d for d in chain.devices if d.runtime == runner.runtime]
    by_threads: dict[int, list[LatencyDevice]] = {}
    for device in devices:
        by_threads.setdefault(device.threads, []).append(device)
    out: dict[str, float | None] = {}
    for i, (n, group) in enumerate(by_threads.items()):
        # ExecuTorch has one thread pool per process, and a runner opened with other threads
        # resizes it: a runner serves only the devices timed before the next one is opened.
        timed = (
            runner if i == 0 and n == threads else open_runner(runner.path, runner.input_shape, n)
        )
        for device in group:
            out[device.name] = float(chain.timer(timed))
    return {d.name: out[d.name] for d in devices}


def _bind(fn: Callable[..., Path], *args: Any) -> Callable[[], Path]:
    return lambda: fn(*args)

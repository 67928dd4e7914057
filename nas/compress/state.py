"""The state one chain run's steps share, and how a model becomes a row of the report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.compress.config import ChainConfig
from nas.compress.distill import evaluate_accuracy
from nas.compress.latency import LatencyDevice, _latency_ms, predicted_latency_ms
from nas.compress.prune import macs_params
from nas.compress.report import ReportRow, _speedups, _weights_bytes
from nas.supernet import Precision

__all__: list[str] = []

log = logging.getLogger(__name__)


class _Chain:
    """State of one chain run: its settings, the models of the steps so far and their rows; the
    step functions (:mod:`nas.compress.steps`, :mod:`nas.compress.export`) read and extend it."""

    def __init__(
        self,
        directory: Path,
        space: Any,
        arch: dict[str, Any],
        data: Any,
        config: ChainConfig,
        build: Callable[[], nn.Module],
        devices: Sequence[LatencyDevice],
        predictor: Any,
        timer: Callable[[Callable[[], object]], float],
        seed: int,
    ) -> None:
        self.dir = directory
        self.space, self.arch, self.data, self.cfg = space, arch, data, config
        self.build = build
        self.devices = list(devices)
        self.predictor = predictor
        self.timer = timer
        self.seed = seed
        self.shape: tuple[int, int, int] = tuple(int(s) for s in space.input_shape(arch))  # type: ignore[assignment]
        self.fp32: dict[str, nn.Module] = {}  # step -> fp32 model, in order
        # step -> (converted int8 model, its fp32 twin, the step that made its fp32 source)
        self.int8: dict[str, tuple[nn.Module, nn.Module, str]] = {}
        self.rows: dict[str, list[ReportRow]] = {}
        self.artifacts: list[Path] = []
        self.student: nn.Module | None = None  # the distill step's student and teacher
        self.teacher: nn.Module | None = None
        #: the device and autocast of the training steps (KD, pruning's fine-tuning, QAT in
        #: fp32 on its device); None: fp32 where the models are (the CPU)
        self.precision: Precision | None = None
        gen = torch.Generator().manual_seed(seed + 7)
        train_x = data.train.tensors[0]
        idx = torch.randperm(len(train_x), generator=gen)[: config.export.calibration_images]
        self.calibration = train_x[idx]  # k x C x H x W, seeded subset of the train split

    # -- helpers ------------------------------------------------------------------------------
    def latest_fp32(self) -> tuple[str, nn.Module]:
        name = next(reversed(self.fp32))
        return name, self.fp32[name]

    def accuracy(self, module: nn.Module) -> float:
        return evaluate_accuracy(module, self.data.test, self.cfg.eval_batch_size)

    def measure(self, module: nn.Module, dtype: str) -> dict[str, float | None]:
        """``module`` timed on every device that times ``dtype``, by device name (None: the
        device failed on it)."""
        out: dict[str, float | None] = {}
        for device in self.devices:
            name = device.name
            if dtype not in device.dtypes:
                continue
            try:
                # Only int8 needs calibration images: a device that quantizes nothing may
                # take (module, input_shape, dtype) alone.
                if dtype == "int8":
                    shape = (1, *self.shape)
                    result = device.measure_module(module, shape, dtype, self.calibration[:64])
                else:
                    result = device.measure_module(module, (1, *self.shape), dtype)
                out[name] = _latency_ms(result)
            except Exception as err:  # a runtime failing on one model must not stop the chain
                log.warning(
                    "device %s could not time %s (%s: %s)", name, dtype, type(err).__name__, err
                )
                out[name] = None
        return out

    def model_row(
        self,
        step: str,
        label: str,
        module: nn.Module,
        dtype: str,
        *,
        measure_as: nn.Module | None = None,
        file: Path | None = None,
        pristine: bool = False,
        baseline: ReportRow | None = None,
        notes: str = "",
    ) -> ReportRow:
        fp32_module = measure_as if measure_as is not None else module
        macs, params = macs_params(fp32_module, self.shape)
        latency = self.measure(fp32_module, dtype)
        row = ReportRow(
            step=step,
            model=label,
            dtype=dtype,
            accuracy=self.accuracy(module),
            macs=macs,
            params=params,
            size_bytes=file.stat().st_size if file is not None else None,
            weights_bytes=_weights_bytes(module),
            latency_ms=latency,
            predicted_latency_ms=predicted_latency_ms(
                self.predictor,
                fp32_module,
                self.shape,
                dtype,
                space=self.space if pristine else None,
                arch=self.arch if pristine else None,
            ),
            file=file.name if file is not None else "",
            notes=notes,
        )
        if baseline is not None:
            row.speedup = _speedups(baseline.latency_ms, latency)
        return row

    def baseline_row(self, step_name: str) -> ReportRow | None:
        """The PyTorch row of the model made by ``step_name`` ("input": the student as given)."""
        for rows in self.rows.values():
            for row in rows:
                if row.step == step_name and row.format == "pytorch":
                    return row
        return None

    def int8_row(
        self,
        step: str,
        label: str,
        converted: nn.Module,
        fp32_src: nn.Module,
        src_name: str,
        path: Path,
        notes: str = "",
    ) -> ReportRow:
        baseline = self.baseline_row(src_name)
        row = self.model_row(
            step,
            label,
            converted,
            "int8",
            measure_as=fp32_src,
            file=path,
            baseline=baseline,
            notes=notes,
        )
        row.source = src_name
        if baseline is not None and baseline.accuracy is not None and row.accuracy is not None:
            drop = 100 * (baseline.accuracy - row.accuracy)
            row.notes = (row.notes + "; " if row.notes else "") + (
                f"accuracy {drop:.2f} points below its fp32 source"
                if drop >= 0
                else f"accuracy {-drop:.2f} points above its fp32 source"
            )
        row.notes += "; checkpoint holds fp32 weights + quantization state (size_bytes)"
        return row

"""Runtimes: the engines behind real devices (ONNX Runtime, ExecuTorch + XNNPACK, PyTorch eager).

A runtime follows :class:`Runtime`: ``prepare`` compiles a module for an input shape and dtype
(cached on disk where the runtime has an artifact), ``measure_module`` times it with the
protocol of :mod:`latency_models.measure`, ``measure_many`` times many layers for a LUT. It is
not a device: a :class:`latency_models.RealDevice` wraps one (the registered real devices of
``latency_models.DEVICES`` are built that way), and users pick devices, never runtimes. Runtime
packages are imported only when a runtime is used; a missing one raises
:class:`RuntimeUnavailableError` naming the extra to install.
"""

from __future__ import annotations

from latency_models.runtimes.base import (
    DTYPES,
    LayerItem,
    Prepared,
    Runtime,
    RuntimeUnavailableError,
)
from latency_models.runtimes.cache import ENV_VAR, ArtifactCache, default_cache_root
from latency_models.runtimes.onnxrt import OrtCPURuntime
from latency_models.runtimes.torch_cpu import TorchRuntime
from latency_models.runtimes.xnnpack import XnnpackRuntime
from latency_models.runtimes.xnnpack_batch import XnnpackBatch

__all__ = [
    "DTYPES",
    "ENV_VAR",
    "ArtifactCache",
    "LayerItem",
    "OrtCPURuntime",
    "Prepared",
    "Runtime",
    "RuntimeUnavailableError",
    "TorchRuntime",
    "XnnpackBatch",
    "XnnpackRuntime",
    "default_cache_root",
]

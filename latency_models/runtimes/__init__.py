"""Real devices: runtimes on this machine that time one layer or a whole network.

Every device follows :class:`RuntimeDevice`: ``prepare`` compiles a module for an input shape
and dtype (cached on disk where the runtime has an artifact), ``measure_module`` times it with
the protocol of :mod:`latency_models.measure`, ``measure_many`` times many layers for a LUT.
Runtime packages are imported only when a device is used; a missing one raises
:class:`RuntimeUnavailableError` naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable

from latency_models.runtimes.base import (
    DTYPES,
    LayerItem,
    Prepared,
    RuntimeDevice,
    RuntimeUnavailableError,
    close_matches_error,
)
from latency_models.runtimes.cache import ENV_VAR, ArtifactCache, default_cache_root
from latency_models.runtimes.onnxrt import OrtCPUDevice
from latency_models.runtimes.torch_cpu import TorchCPUDevice
from latency_models.runtimes.xnnpack import XnnpackDevice
from latency_models.runtimes.xnnpack_batch import XnnpackBatch

__all__ = [
    "DTYPES",
    "ENV_VAR",
    "REAL_DEVICES",
    "ArtifactCache",
    "LayerItem",
    "OrtCPUDevice",
    "Prepared",
    "RuntimeDevice",
    "RuntimeUnavailableError",
    "TorchCPUDevice",
    "XnnpackBatch",
    "XnnpackDevice",
    "default_cache_root",
    "real_device",
]

REAL_DEVICES: dict[str, Callable[[], RuntimeDevice]] = {
    "torch-cpu": lambda: TorchCPUDevice("torch-cpu", threads=1),
    "torch-cpu-2t": lambda: TorchCPUDevice("torch-cpu-2t", threads=2),
    "ort-cpu-1t": lambda: OrtCPUDevice("ort-cpu-1t", threads=1),
    "ort-cpu-2t": lambda: OrtCPUDevice("ort-cpu-2t", threads=2),
    "xnnpack-1t": lambda: XnnpackDevice("xnnpack-1t", threads=1),
    "xnnpack-2t": lambda: XnnpackDevice("xnnpack-2t", threads=2),
}
"""Named real devices (factories, so nothing is imported or built until asked for)."""


def real_device(name: str) -> RuntimeDevice:
    """A new instance of the named real device; unknown names list close matches."""
    try:
        factory = REAL_DEVICES[name]
    except KeyError:
        raise close_matches_error("real device", name, REAL_DEVICES) from None
    return factory()

"""Latency in the chain: the devices it measures on, and a latency model's predictions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from nas.backends import ARTIFACT_SUFFIXES
from nas.core.layers import trace_layer_specs

__all__ = ["RUNTIMES", "ArtifactTimer", "LatencyDevice", "predicted_latency_ms"]

RUNTIMES: tuple[str, ...] = (*dict.fromkeys(ARTIFACT_SUFFIXES.values()), "torch")
"""The runtimes a device may run: those of the artifacts (``nas.backends.ARTIFACT_SUFFIXES``:
executorch-xnnpack, onnxruntime, litert) and ``torch`` (PyTorch modules, no artifact)."""

_DEVICE_ATTRIBUTES = ("name", "runtime", "threads", "dtypes", "measure_module")


class LatencyDevice(Protocol):
    """What the chain needs of a device (``latency_models``' real devices have this shape).

    ``name`` names the device's latency column in the report. Every model of the chain is timed
    with ``measure_module`` when its dtype is one of ``dtypes`` (a device with none times only
    artifacts); every exported artifact whose runtime is the device's ``runtime`` (one of
    :data:`RUNTIMES`) is run and timed there with ``threads`` threads.
    """

    @property
    def name(self) -> str: ...

    @property
    def runtime(self) -> str: ...

    @property
    def threads(self) -> int: ...

    @property
    def dtypes(self) -> Sequence[str]: ...

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = ...,
        calibration: torch.Tensor | None = ...,
    ) -> Any:
        """``module`` timed at ``input_shape`` (batch included) in ``dtype``: a measurement with
        ``latency_ms`` (or a number of ms). The chain passes ``calibration`` images
        (k x C x H x W) for int8 only, to quantize with."""
        ...


@dataclass(frozen=True)
class ArtifactTimer:
    """A device of the chain that times the exported artifacts of one runtime and no PyTorch
    model (it has no dtypes): a run whose devices do not include a runtime still gets its
    artifacts timed there, in a column named `name`."""

    name: str
    runtime: str
    threads: int = 1
    dtypes: tuple[str, ...] = ()

    def measure_module(self, *args: Any, **kwargs: Any) -> float:
        raise NotImplementedError(f"{self.name} times artifacts only")


def _check_devices(devices: Sequence[LatencyDevice]) -> list[LatencyDevice]:
    """``devices`` as a list, or an error naming what a device lacks."""
    for device in devices:
        missing = [a for a in _DEVICE_ATTRIBUTES if not hasattr(device, a)]
        if missing:
            raise TypeError(
                f"device {device!r} lacks {', '.join(missing)}: the chain takes device objects "
                f"with {', '.join(_DEVICE_ATTRIBUTES)} (nas.compress.LatencyDevice), such as "
                "latency_models' real devices"
            )
        if device.runtime not in RUNTIMES:
            raise ValueError(
                f"device {device.name!r} runs {device.runtime!r}; a device's runtime is one of "
                f"{list(RUNTIMES)}"
            )
        if not (isinstance(device.threads, int) and device.threads >= 1):
            raise ValueError(f"device {device.name!r} has {device.threads!r} threads; want >= 1")
    return list(devices)


def _latency_ms(result: Any) -> float:
    if isinstance(result, (int, float)):
        return float(result)
    value = getattr(result, "latency_ms", None)
    if value is None:
        raise TypeError(
            f"a device's measure_module must return a number of ms or an object with latency_ms "
            f"(a latency_models.measure.Measurement); "
            f"got {type(result).__name__}"
        )
    return float(value)


def predicted_latency_ms(
    predictor: Any,
    module: nn.Module,
    input_shape: Sequence[int],
    dtype: str = "fp32",
    *,
    space: Any = None,
    arch: Mapping[str, Any] | None = None,
) -> float | None:
    """A latency model's prediction for ``module``, whatever shape the predictor has.

    Tried in order: ``predict_module(module, input_shape, dtype)``; ``predict_specs(specs)`` on
    the module's traced layer specs (in ``dtype``); ``predict_arch(space, arch)`` when an
    unchanged arch is given and ``dtype`` is fp32; a plain callable ``module -> ms`` for fp32.
    None when the predictor cannot price this module.
    """
    if predictor is None:
        return None
    shape = tuple(int(s) for s in input_shape)
    if hasattr(predictor, "predict_module"):
        return float(predictor.predict_module(module, shape, dtype))
    if hasattr(predictor, "predict_specs"):
        return float(predictor.predict_specs(trace_layer_specs(module, shape, dtype=dtype)))
    if hasattr(predictor, "predict_arch"):
        if space is not None and arch is not None and dtype == "fp32":
            return float(predictor.predict_arch(space, arch))
        return None
    if callable(predictor) and dtype == "fp32":
        return float(predictor(module))
    return None


def _module_latency_fn(predictor: Any, input_shape: Sequence[int]) -> Callable[[nn.Module], float]:
    if predictor is None or not (
        hasattr(predictor, "predict_module")
        or hasattr(predictor, "predict_specs")
        or (callable(predictor) and not hasattr(predictor, "predict_arch"))
    ):
        raise ValueError(
            "pruning to a latency budget needs a latency predictor that prices any module: an "
            "object with predict_module(module, input_shape, dtype) or predict_specs(specs), or "
            f"a callable module -> ms; got {type(predictor).__name__}"
        )

    def fn(m: nn.Module) -> float:
        value = predicted_latency_ms(predictor, m, input_shape)
        assert value is not None
        return value

    return fn

"""Latency in the chain: the devices it measures on, and a latency model's predictions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from nas.core.layers import trace_layer_specs

__all__ = ["LatencyDevice", "predicted_latency_ms"]


class LatencyDevice(Protocol):
    """What the chain needs of a device: a name and a way to time a module."""

    name: str

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = ...,
        calibration: torch.Tensor | None = ...,
    ) -> Any:
        """A measurement with ``latency_ms`` (or a number of ms)."""
        ...


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

"""What the wings hand each other: the latency-model and pricer protocols, and their errors.

`latency_models` implements `LatencyModel`; the search, the pipeline and the compression chain
take any object that has its shape, so the engine never imports a latency model by name.
`ArchPricer` / `LayerPricer` are how hardware-aware training (`nas.hwtrain`) prices archs: a
latency model adapted by `latency_models.layer_pricer` (whole networks, or layer by layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nas.core.layers import LayerSpec
from nas.core.space import SearchSpace

__all__ = [
    "ArchPricer",
    "CannotPriceLayersError",
    "LatencyModel",
    "LayerPricer",
    "NotFittedError",
    "price_with_layers",
]


class NotFittedError(RuntimeError):
    """`predict` called on a predictor (of accuracy or latency) that must be fitted first."""


@runtime_checkable
class LatencyModel(Protocol):
    """What the engine needs of a latency model: the device and dtype it prices, and a latency
    in milliseconds for one arch or many."""

    device: str
    dtype: str

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float: ...

    def predict_many(
        self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]
    ) -> np.ndarray: ...


class CannotPriceLayersError(TypeError):
    """A latency model that cannot price an arch layer by layer (a kernel table, a table of
    whole networks); the message says why and which kinds can."""


@runtime_checkable
class ArchPricer(Protocol):
    """Whole-network prices (ms) of archs on one device in one dtype: what an expectation that
    enumerates archs needs (a table device's measured networks qualify)."""

    device: str
    dtype: str

    def arch_ms(self, space: SearchSpace, arch: Mapping[str, Any]) -> float: ...


@runtime_checkable
class LayerPricer(ArchPricer, Protocol):
    """An `ArchPricer` that prices one layer at a time: the network's price is
    `network_ms + sum(layer_ms(s) for s in specs(space, arch))`.

    `specs` are the layers the device executes for the arch (dead branches removed where the
    device removes them); `network_ms` is the constant per-network cost (an emulated device's
    dispatch overhead, a learned intercept), 0.0 where there is none.
    """

    network_ms: float

    def specs(self, space: SearchSpace, arch: Mapping[str, Any]) -> Sequence[LayerSpec]: ...

    def layer_ms(self, spec: LayerSpec) -> float: ...


def price_with_layers(pricer: LayerPricer, space: SearchSpace, arch: Mapping[str, Any]) -> float:
    """An arch's price by the layer rule of `LayerPricer` (the one definition adapters share)."""
    return float(pricer.network_ms + sum(pricer.layer_ms(s) for s in pricer.specs(space, arch)))

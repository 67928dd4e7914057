"""What the wings hand each other: the latency-model protocol and the not-fitted error.

`latency_models` implements `LatencyModel`; the search, the pipeline and the compression chain
take any object that has its shape, so the engine never imports a latency model by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nas.core.space import SearchSpace

__all__ = ["LatencyModel", "NotFittedError"]


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

"""The ground floor every wing imports: search spaces (`Choice`, `SearchSpace`, arch keys),
layer specs and their tracing, building blocks, elastic ops and the `Supernet`, registries,
the protocols the wings exchange, and atomic files. It imports nothing else of ours."""

from __future__ import annotations

from nas.core.elastic import Supernet
from nas.core.files import CheckpointError, FileProblem
from nas.core.layers import ArchCost, LayerSpec, trace_layer_specs
from nas.core.protocols import (
    ArchPricer,
    CannotPriceLayersError,
    LatencyModel,
    LayerPricer,
    NotFittedError,
)
from nas.core.registry import Registry, UnknownNameError
from nas.core.space import Arch, Choice, InvalidArchError, SearchSpace, as_rng

__all__ = [
    "Arch",
    "ArchCost",
    "ArchPricer",
    "CannotPriceLayersError",
    "CheckpointError",
    "Choice",
    "FileProblem",
    "InvalidArchError",
    "LatencyModel",
    "LayerPricer",
    "LayerSpec",
    "NotFittedError",
    "Registry",
    "SearchSpace",
    "Supernet",
    "UnknownNameError",
    "as_rng",
    "trace_layer_specs",
]

"""Adapters that let hardware-aware training price archs layer by layer (`nas.core.LayerPricer`)
with the same latency models the search uses: a LUT sum, a LUT sum with its learned correction,
the calibrated cost model, and (whole networks only) a table device's measurements.

Each adapter prices an arch exactly as its model's `predict_arch` does; a model whose price does
not split into layers (a kernel table: the runtime's optimiser fuses across layers) raises
`nas.core.CannotPriceLayersError` saying which kinds can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from latency_models.costmodel import leaf_specs, op_kind
from latency_models.lut import MissingKeysError
from latency_models.predictors import CostModelPredictor, TableLatency
from latency_models.profiles import KINDS
from latency_models.spec_modules import is_free
from latency_models.table_sums import KernelSum, LUTCorrected, LUTSum
from nas.core.layers import LayerSpec
from nas.core.protocols import ArchPricer, CannotPriceLayersError, price_with_layers
from nas.core.space import SearchSpace

__all__ = [
    "CostModelLayerPricer",
    "LUTCorrectedLayerPricer",
    "LUTLayerPricer",
    "TablePricer",
    "layer_pricer",
]

_PRICEABLE = "lut, lut+correction, costmodel (layer by layer) or table (whole networks)"


class LUTLayerPricer:
    """`LUTSum`: each layer's LUT minimum, plus the device's per-network cost
    (`network_overhead_ms` of the model where it has one, 0.0 otherwise)."""

    def __init__(self, model: LUTSum) -> None:
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.network_ms = float(getattr(model, "network_overhead_ms", 0.0))

    def specs(self, space: SearchSpace, arch: Mapping[str, Any]) -> list[LayerSpec]:
        specs = self.model.specs(space, arch)
        missing = self.model.lut.missing(specs)
        if missing:
            if self.model.on_missing != "measure":
                raise MissingKeysError(missing, self.model.lut)
            self.model.predict_arch(space, arch)  # measures what is missing, once
        return specs

    def layer_ms(self, spec: LayerSpec) -> float:
        return 0.0 if is_free(spec) else float(self.model.lut[spec.key].min_ms)

    def arch_ms(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return price_with_layers(self, space, arch)


class LUTCorrectedLayerPricer(LUTLayerPricer):
    """`LUTCorrected`: its correction b + s*sum + sum_k w_k*sum_k + c*n_layers is linear in the
    layers, so each priced layer costs s*t + sum_k w_k*t_k + c (t its LUT time, t_k the share of
    op kind k) and b is the per-network constant. Unfitted it is the plain sum."""

    def __init__(self, model: LUTCorrected) -> None:
        super().__init__(model)
        self.corrected = model
        if model.coef_ is not None:
            self.network_ms = float(model.coef_[0])

    def layer_ms(self, spec: LayerSpec) -> float:
        if is_free(spec):
            return 0.0
        t = float(self.model.lut[spec.key].min_ms)
        coef = self.corrected.coef_
        if coef is None:
            return t
        kinds = [op_kind(leaf) for leaf in leaf_specs(spec)]
        names = list(KINDS)
        per_kind = coef[2 : 2 + len(names)]
        share = t / len(kinds)
        return float(coef[1] * t + sum(per_kind[names.index(k)] * share for k in kinds) + coef[-1])


class CostModelLayerPricer:
    """`CostModelPredictor`: the (calibrated) cost model's time per layer the emulated device
    executes, plus its per-network overhead."""

    def __init__(self, model: CostModelPredictor) -> None:
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        emulated = model.emulated
        self.network_ms = float(emulated.params.network_overhead(emulated.profile))

    def specs(self, space: SearchSpace, arch: Mapping[str, Any]) -> Sequence[LayerSpec]:
        return self.model.emulated.layer_specs(space, arch, self.dtype)

    def layer_ms(self, spec: LayerSpec) -> float:
        return float(self.model.emulated.layer_ms(spec))

    def arch_ms(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return price_with_layers(self, space, arch)


class TablePricer:
    """`TableLatency`: measured whole networks, for archs the table holds (nb201 on its
    phones: all 15,625 cells, so an expectation enumerates them). It prices no layer."""

    def __init__(self, model: TableLatency) -> None:
        self.model = model
        self.device = model.device
        self.dtype = model.dtype

    def arch_ms(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return float(self.model.predict_arch(space, arch))


def layer_pricer(model: Any) -> ArchPricer:
    """The pricer of a latency model: a `LayerPricer` for LUT sums (plain or corrected) and the
    cost model, an `ArchPricer` of whole networks for a table device; anything else raises
    `CannotPriceLayersError` naming the kinds that can."""
    if isinstance(model, LUTCorrected):
        return LUTCorrectedLayerPricer(model)
    if isinstance(model, LUTSum):
        return LUTLayerPricer(model)
    if isinstance(model, CostModelPredictor):
        return CostModelLayerPricer(model)
    if isinstance(model, TableLatency):
        return TablePricer(model)
    if isinstance(model, KernelSum):
        raise CannotPriceLayersError(
            f"the kernel-table model of {model.device!r} cannot price layers: it times the "
            "kernels the runtime's optimiser makes of the whole network, fused across layers; "
            f"use {_PRICEABLE}"
        )
    raise CannotPriceLayersError(
        f"{type(model).__name__} cannot price archs layer by layer; use {_PRICEABLE}"
    )

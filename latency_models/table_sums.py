"""Latency models that sum a table: `LUTSum` (a LUT of the space's layers, OFA's predictor),
`LUTCorrected` (that sum plus a learned correction) and `KernelSum` (a kernel table of what
the runtime's optimiser makes of the whole network, fitted as a line)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from latency_models.costmodel import leaf_specs, op_kind
from latency_models.devices import Device
from latency_models.lut import LUT, MissingKeysError
from latency_models.lut_build import fill_missing
from latency_models.predictors import LatencyPredictor, _check_xy, _fit_line
from latency_models.profiles import KINDS
from latency_models.spec_modules import is_free
from nas.core.space import SearchSpace

__all__ = ["KernelSum", "LUTCorrected", "LUTSum"]


class LUTSum(LatencyPredictor):
    """Sum of the LUT minima of the layers `device` executes for an arch, plus the fixed
    per-network cost the device charges where it knows one (`network_overhead_ms`: an emulated
    profile's; 0 on a real runtime, where the corrected kind fits it, and with no device).

    `on_missing="measure"` measures absent keys on `device` (appending them to the LUT's file);
    "raise" lists them all in one `MissingKeysError`.
    """

    table_kind = "layers"
    learned_kind: ClassVar[str | None] = "lut+correction"

    def __init__(self, lut: LUT, device: Device | None = None, on_missing: str = "raise") -> None:
        if on_missing not in ("raise", "measure"):
            raise ValueError(f"on_missing must be 'raise' or 'measure', got {on_missing!r}")
        if on_missing == "measure" and device is None:
            raise ValueError("on_missing='measure' needs the device to measure on")
        if device is not None:
            lut.check_device(device)
        self.lut = lut
        self.device_obj = device
        self.on_missing = on_missing
        self.device = lut.device
        self.dtype = lut.dtype
        #: what one inference call costs beside its layers (ms), part of every prediction
        self.network_overhead_ms = device.network_overhead_ms(lut.dtype) if device else 0.0

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> LUTSum:
        return cls(_table_of(cls, table, dtype), device, on_missing)

    def specs(self, space: SearchSpace, arch: Mapping[str, Any]) -> list[Any]:
        if self.device_obj is not None:
            return self.device_obj.layer_specs(space, arch, self.dtype)
        return space.layer_specs(arch, self.dtype)

    def _ensure(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> None:
        """Measure (on_missing="measure") or report, all at once, the keys `archs` need."""
        specs = [s for a in archs for s in self.specs(space, a)]
        missing = self.lut.missing(specs)
        if not missing:
            return
        if self.on_missing == "measure" and self.device_obj is not None:
            fill_missing(self.lut, self.device_obj, specs)
        else:
            raise MissingKeysError(missing, self.lut)

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        self._ensure(space, [arch])
        return self.lut.latency_ms(self.specs(space, arch)) + self.network_overhead_ms

    def predict_many(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self._ensure(space, archs)
        sums = [self.lut.latency_ms(self.specs(space, a)) for a in archs]
        return np.array(sums) + self.network_overhead_ms


#: op kinds of the learned correction's per-kind terms (cost-model kinds of each leaf)
_CORRECTION_KINDS = KINDS


class LUTCorrected(LUTSum):
    """LUT sum plus a learned correction (module docstring).

    latency = b + s * sum + sum_k w_k * sum_k + c * n_layers, where sum_k is the LUT time of
    op kind k; fitted on relative errors with a ridge pulling (s, w, c) towards (1, 0, 0), so
    with few archs it stays close to the plain sum.
    """

    learned_kind = None

    def __init__(
        self,
        lut: LUT,
        device: Device | None = None,
        on_missing: str = "raise",
        alpha: float = 1e-2,
    ) -> None:
        super().__init__(lut, device, on_missing)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = alpha
        self.coef_: np.ndarray | None = None

    def features(self, space: SearchSpace, arch: Mapping[str, Any]) -> np.ndarray:
        specs = [s for s in self.specs(space, arch) if not is_free(s)]
        total = self.lut.latency_ms(specs)
        per_kind = dict.fromkeys(_CORRECTION_KINDS, 0.0)
        for s in specs:
            kinds = [op_kind(leaf) for leaf in leaf_specs(s)]
            share = self.lut[s.key].min_ms / len(kinds)
            for k in kinds:
                per_kind[k] += share
        return np.array([1.0, total, *per_kind.values(), float(len(specs))])

    def fit(
        self,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        latency_ms: Sequence[float] | np.ndarray,
    ) -> LUTCorrected:
        y = _check_xy(archs, latency_ms)
        self._ensure(space, archs)
        x = np.stack([self.features(space, a) for a in archs])
        a = x / y[:, None]
        prior = np.zeros(x.shape[1])
        prior[1] = 1.0
        scale = np.maximum(np.abs(a).mean(axis=0), 1e-12)
        reg = np.sqrt(self.alpha * len(y)) * np.diag(scale)
        reg[0, 0] = 0.0  # the intercept (per-network overhead) is free
        lhs = np.vstack([a, reg])
        rhs = np.concatenate([np.ones(len(y)), reg @ prior])
        coef, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
        self.coef_ = coef
        return self

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        self._ensure(space, [arch])
        f = self.features(space, arch)
        if self.coef_ is None:
            return float(f[1]) + self.network_overhead_ms  # unfitted: the plain sum
        return float(f @ self.coef_)

    def predict_many(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self._ensure(space, archs)
        return np.array([self.predict_arch(space, a) for a in archs])


class KernelSum(LatencyPredictor):
    """Sum of the kernel-table times of the kernels the runtime runs for an arch
    (`latency_models.kernels`); `fit` draws a line through the sum (a scale for the window the
    kernels were timed in, an intercept for the per-run overhead), unfitted it is the sum.

    Finding an arch's kernels optimises its whole network (about a second on ONNX Runtime), so
    they are remembered per arch, and kept beside a table that has a file (`ArchKernelCache`;
    `cache_archs=False` keeps them in memory only). `on_missing="measure"` times kernels the
    table lacks on the spot (appended to its file); "raise" lists them all in one
    `MissingKeysError`.
    """

    table_kind = "kernels"

    def __init__(
        self, lut: LUT, device: Device, on_missing: str = "raise", cache_archs: bool = True
    ) -> None:
        from latency_models.kernels import check_kernel_lut, open_arch_cache

        if on_missing not in ("raise", "measure"):
            raise ValueError(f"on_missing must be 'raise' or 'measure', got {on_missing!r}")
        check_kernel_lut(lut, device)
        self.lut = lut
        self.device_obj = device
        self.on_missing = on_missing
        self.device = lut.device
        self.dtype = lut.dtype
        self.coef_: tuple[float, float] | None = None
        self._kernels: dict[tuple[str, str], list[Any]] = {}
        self._arch_cache = (
            open_arch_cache(lut.path, device, lut.dtype)
            if cache_archs and lut.path is not None
            else None
        )

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> KernelSum:
        return cls(_table_of(cls, table, dtype), device, on_missing)

    def kernels(self, space: SearchSpace, arch: Mapping[str, Any]) -> list[Any]:
        from latency_models.kernels import arch_kernels

        memo = (space.name, space.key(arch))
        if memo not in self._kernels:
            self._kernels[memo] = arch_kernels(
                self.device_obj, space, arch, self.dtype, self._arch_cache
            )
        return self._kernels[memo]

    def _ensure(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> None:
        from latency_models.kernels import fill_missing_kernels

        kernels = [k for a in archs for k in self.kernels(space, a)]
        missing = sorted({k.key for k in kernels if k.key not in self.lut})
        if not missing:
            return
        if self.on_missing == "measure":
            fill_missing_kernels(self.lut, self.device_obj, kernels)
        else:
            raise MissingKeysError(missing, self.lut)

    def kernel_sum(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        """The plain sum (ms) of the arch's kernel times."""
        self._ensure(space, [arch])
        return float(sum(self.lut[k.key].min_ms for k in self.kernels(space, arch)))

    def fit(
        self,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        latency_ms: Sequence[float] | np.ndarray,
    ) -> KernelSum:
        y = _check_xy(archs, latency_ms)
        self._ensure(space, archs)
        self.coef_ = _fit_line(np.array([self.kernel_sum(space, a) for a in archs]), y)
        return self

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        total = self.kernel_sum(space, arch)
        if self.coef_ is None:
            return total
        slope, intercept = self.coef_
        return slope * total + intercept

    def predict_many(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self._ensure(space, archs)
        return np.array([self.predict_arch(space, a) for a in archs])


def _table_of(cls: type[LatencyPredictor], table: LUT | None, dtype: str) -> LUT:
    if table is None:
        raise ValueError(
            f"{cls.__name__} prices from a {cls.table_kind} table: build it first "
            "(latency_models.create_latency_model builds or resumes it)"
        )
    if table.dtype != dtype:
        raise ValueError(f"the table holds {table.dtype} times; {dtype} was asked for")
    return table

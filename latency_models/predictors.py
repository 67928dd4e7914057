"""Latency predictors, side by side, in scikit-learn's shape (the constructor stores, `fit`
returns self, `predict` predicts), over archs of a space instead of feature matrices.

Every predictor has `.device` (str), `.dtype` (str), `predict_arch(space, arch) -> float` (ms)
and `predict_many(space, archs) -> np.ndarray`: what the search engine relies on.

- `MacsProxy`, `ParamsProxy`: a line through MACs (or parameters) fitted to measurements: the
  baselines every latency model must beat.
- `CostModelPredictor`: the roofline cost model of a profile, calibrated on measurements.
- `TableLatency`: measured latencies of a table device, for archs the table holds.

Those that sum a table live in `latency_models.table_sums`:

- `LUTSum`: the sum of the LUT entries of the layers the device executes (OFA's predictor).
- `LUTCorrected`: the LUT sum plus a learned correction for what a sum misses (fusion between
  layers, per-network overhead, per-op-kind bias of isolated-layer timings): a ridge fit on
  relative errors, pulled towards the plain sum.
- `KernelSum`: the sum of a kernel table's times over the kernels the runtime's optimiser makes
  of the arch's whole network (`latency_models.kernels`; ONNX Runtime), fitted as a line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import lsq_linear

from latency_models.calibrate import FLOOR_FRAC, CalibrationResult, calibrate
from latency_models.costmodel import CostParams
from latency_models.devices import Device, EmulatedDevice
from latency_models.lut import LUT
from latency_models.profiles import DeviceProfile
from latency_models.tabular import TabularDevice
from nas.core.protocols import LatencyModel, NotFittedError
from nas.core.space import SearchSpace

__all__ = [
    "CostModelPredictor",
    "LatencyModel",
    "LatencyPredictor",
    "MacsProxy",
    "NotFittedError",
    "ParamsProxy",
    "TableLatency",
]


def _check_xy(
    archs: Sequence[Mapping[str, Any]], latency_ms: Sequence[float] | np.ndarray
) -> np.ndarray:
    y = np.asarray(latency_ms, dtype=np.float64)
    if y.ndim != 1 or len(y) != len(archs):
        raise ValueError(
            f"fit needs one latency (ms) per arch; got {len(archs)} archs and shape {y.shape}"
        )
    if len(y) == 0 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("fit needs at least one finite latency > 0 (milliseconds) per arch")
    return y


class LatencyPredictor:
    """Base class: `predict_many` loops over `predict_arch`; `predict` is `predict_many`.

    A kind registered in `latency_models.LATENCY_MODELS` also says how
    `latency_models.create_latency_model` builds it: `table_kind`, `learned_kind` and
    `for_device`.
    """

    device: str = ""
    dtype: str = "fp32"
    table_kind: ClassVar[str | None] = None
    """The table this kind prices from: "layers" (a LUT), "kernels" (a kernel table) or None."""
    learned_kind: ClassVar[str | None] = None
    """The registered kind fitted in this one's place on measured networks, for a kind that
    learns nothing from them (a plain LUT sum: "lut+correction"); None: it fits itself."""

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> LatencyPredictor:
        """An unfitted predictor of this kind for `device` in `dtype`, pricing from `table`
        (a table of `table_kind`) where the kind has one."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build it for a device")

    def fit(
        self,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        latency_ms: Sequence[float] | np.ndarray,
    ) -> LatencyPredictor:
        return self

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def predict_many(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([self.predict_arch(space, a) for a in archs], dtype=np.float64)

    def predict(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.predict_many(space, archs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, dtype={self.dtype!r})"


# --------------------------------------------------------------------------------------------
# Proxies
# --------------------------------------------------------------------------------------------


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of y ~ x, least squares on relative errors, floored as in
    calibration (a network folded to ~0 ms cannot dominate); the slope cannot go negative
    (more MACs, or more kernel time, never make a network faster)."""
    denom = np.maximum(y, FLOOR_FRAC * float(np.median(y)))
    a = np.stack([x, np.ones_like(x)], axis=1) / denom[:, None]
    sol = lsq_linear(a, y / denom, bounds=([0.0, -np.inf], [np.inf, np.inf]))
    return float(sol.x[0]), float(sol.x[1])


class _LineProxy(LatencyPredictor):
    """latency = slope * proxy + intercept, fitted by least squares on relative errors."""

    unit = 1.0

    def __init__(self, device: str = "", dtype: str = "fp32") -> None:
        self.device = device
        self.dtype = dtype
        self.coef_: tuple[float, float] | None = None

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> _LineProxy:
        return cls(device.name, dtype)

    def proxy(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def fit(
        self,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        latency_ms: Sequence[float] | np.ndarray,
    ) -> _LineProxy:
        y = _check_xy(archs, latency_ms)
        x = np.array([self.proxy(space, a) for a in archs]) / self.unit
        self.coef_ = _fit_line(x, y)
        return self

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        if self.coef_ is None:
            raise NotFittedError(
                f"{type(self).__name__} is a line through a proxy: fit it on measured archs "
                "first (or rank archs by .proxy(space, arch) directly)"
            )
        slope, intercept = self.coef_
        return slope * self.proxy(space, arch) / self.unit + intercept


class MacsProxy(_LineProxy):
    """A line through MACs (batch 1)."""

    unit = 1e6

    def proxy(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return float(space.cost(arch).macs)


class ParamsProxy(_LineProxy):
    """A line through the parameter count."""

    unit = 1e6

    def proxy(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return float(space.cost(arch).params)


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------


class CostModelPredictor(LatencyPredictor):
    """The roofline cost model of a profile; `fit` calibrates it (`latency_models.calibrate`).

    `device` is the device the predictions stand for: an emulated device (its profile and
    parameters are the start), a real or table device (the prior profile it gives), or a
    profile. Unfitted, it predicts with the spec-sheet figures.
    """

    def __init__(
        self,
        device: Device | DeviceProfile,
        dtype: str = "fp32",
        params: CostParams | None = None,
        dead_branches: bool | str = "auto",
        prior_weight: float = 1e-3,
    ) -> None:
        self.source = device
        self.dtype = dtype
        self.dead_branches = dead_branches
        self.prior_weight = prior_weight
        if isinstance(device, EmulatedDevice):
            self.emulated = device if params is None else device.with_params(params)
        else:
            profile = device if isinstance(device, DeviceProfile) else device.prior_profile()
            name = f"{profile.name}-emulated" if isinstance(device, DeviceProfile) else device.name
            self.emulated = EmulatedDevice(profile, params, name=name)
        self.device = self.emulated.name
        self.emulated.check_dtype(dtype)
        self.calibration_: CalibrationResult | None = None

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> CostModelPredictor:
        return cls(device, dtype)

    def fit(
        self,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        latency_ms: Sequence[float] | np.ndarray,
    ) -> CostModelPredictor:
        y = _check_xy(archs, latency_ms)
        result = calibrate(
            self.emulated,
            space,
            archs,
            y,
            dtype=self.dtype,
            dead_branches=self.dead_branches,
            prior_weight=self.prior_weight,
            name=self.device,
        )
        self.calibration_ = result
        self.emulated = result.device
        return self

    @property
    def params(self) -> CostParams:
        return self.emulated.params

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return self.emulated.arch_ms(space, arch, self.dtype)


class TableLatency(LatencyPredictor):
    """Latencies measured elsewhere, for the archs a table device holds."""

    def __init__(self, table: TabularDevice) -> None:
        self.table = table
        self.device = table.name
        self.dtype = table.dtypes[0]

    @classmethod
    def for_device(
        cls, device: Device, dtype: str, table: LUT | None = None, on_missing: str = "measure"
    ) -> TableLatency:
        if not isinstance(device, TabularDevice):
            raise ValueError(
                f"the table latency model reads a table device's measurements; {device.name!r} "
                f"is a {device.kind} device (pick a table device such as 'nb201-pixel3')"
            )
        return cls(device)

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return self.table.latency_ms(space, arch)

"""One way to a latency model: the `LATENCY_MODELS` registry of kinds, and
`create_latency_model(kind, space, device, ...)`, which builds (or resumes) the table a kind
prices from and returns the model, fitted where measured networks are given.

Kinds: "macs" and "params" (a line through a proxy, fitted), "lut" (the sum of a LUT of the
space's layers), "lut+correction" (that sum with a learned correction), "kernels" (the sum of a
kernel table, fitted as a line: ONNX Runtime devices), "costmodel" (a profile's cost model,
calibrated where fitted) and "table" (a table device's own measurements).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latency_models.devices import Device
from latency_models.kernels import build_kernel_lut, kernel_lut_path
from latency_models.lut import LUT, lut_path
from latency_models.lut_build import build_lut
from latency_models.predictors import (
    CostModelPredictor,
    LatencyPredictor,
    MacsProxy,
    ParamsProxy,
    TableLatency,
)
from latency_models.table_sums import KernelSum, LUTCorrected, LUTSum
from nas.core.registry import Registry
from nas.core.space import SearchSpace

__all__ = [
    "LATENCY_MODELS",
    "build_table",
    "create_latency_model",
    "latency_model_class",
    "table_kinds",
    "table_path",
]

LATENCY_MODELS: Registry[LatencyPredictor] = Registry("latency model")
"""Kind -> predictor class (a `LatencyPredictor` subclass: its `table_kind`, `learned_kind` and
`for_device` tell `create_latency_model` how to build it)."""

for _kind, _cls in (
    ("macs", MacsProxy),
    ("params", ParamsProxy),
    ("lut", LUTSum),
    ("lut+correction", LUTCorrected),
    ("kernels", KernelSum),
    ("costmodel", CostModelPredictor),
    ("table", TableLatency),
):
    LATENCY_MODELS.register(_kind, _cls, (_cls.__doc__ or "").strip().splitlines()[0])


def _build_kernels(
    space: SearchSpace, device: Device, path: str | Path | None, *, batch_layers: int, **kw: Any
) -> LUT:
    return build_kernel_lut(space, device, path, batch_kernels=batch_layers, **kw)


@dataclass(frozen=True)
class _Table:
    build: Callable[..., LUT]
    path: Callable[[str | Path, Device | str, str], Path]


_TABLES: Mapping[str, _Table] = {
    "layers": _Table(build_lut, lut_path),
    "kernels": _Table(_build_kernels, kernel_lut_path),
}
"""The tables kinds price from, by `table_kind`, the layer LUT first (the default)."""


def latency_model_class(kind: str) -> type[LatencyPredictor]:
    """The predictor class registered as `kind`; an unknown kind lists the registered ones."""
    cls = LATENCY_MODELS.factory(kind)
    if not (isinstance(cls, type) and issubclass(cls, LatencyPredictor)):
        raise TypeError(
            f"latency model {kind!r} is registered as {cls!r}; create_latency_model needs a "
            "LatencyPredictor subclass (table_kind, learned_kind, for_device)"
        )
    return cls


def table_kinds() -> list[str]:
    """The registered kinds that sum a table as built (layer LUT kinds first), leaving out the
    learned forms of others: what a run config's `latency_model` and `nas search
    --latency-model` name (measured networks then fit each kind's learned form)."""
    classes = {k: latency_model_class(k) for k in LATENCY_MODELS}
    learned = {c.learned_kind for c in classes.values()}
    return [
        k for t in _TABLES for k, c in classes.items() if c.table_kind == t and k not in learned
    ]


def _table_of(kind: str) -> _Table:
    table_kind = latency_model_class(kind).table_kind
    if table_kind is None:
        with_table = [k for k in LATENCY_MODELS if latency_model_class(k).table_kind is not None]
        raise ValueError(
            f"latency model {kind!r} prices from no table; kinds that do: {', '.join(with_table)}"
        )
    return _TABLES[table_kind]


def table_path(kind: str, directory: str | Path, device: Device | str, dtype: str) -> Path:
    """The conventional file, in `directory`, of the table `kind` prices from on `device`
    (`lut_<device>_<dtype>.csv`, `kernels_<device>_<dtype>.csv`)."""
    return _table_of(kind).path(directory, device, dtype)


def build_table(
    kind: str,
    space: SearchSpace,
    device: Device,
    path: str | Path | None = None,
    *,
    dtype: str | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_layers: int = 32,
    passes: int = 1,
    progress: bool = False,
) -> LUT:
    """The table the latency model `kind` prices from, measured on `device` (`build_lut` for a
    layer LUT, `build_kernel_lut` for a kernel table): written to `path` as measured, resumed
    where a table is there, in memory without a path. A kind that prices from no table is an
    error listing those that do."""
    return _table_of(kind).build(
        space,
        device,
        path,
        dtype=dtype,
        archs=archs,
        n_archs=n_archs,
        seed=seed,
        batch_layers=batch_layers,
        passes=passes,
        progress=progress,
    )


def create_latency_model(
    kind: str,
    space: SearchSpace,
    device: Device,
    *,
    dtype: str | None = None,
    table: LUT | None = None,
    path: str | Path | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    passes: int = 1,
    progress: bool = False,
    fit: tuple[Sequence[Mapping[str, Any]], Sequence[float] | np.ndarray] | None = None,
    on_missing: str = "measure",
) -> LatencyPredictor:
    """A latency model of the registered `kind` (`LATENCY_MODELS`) for `device` in `dtype`
    (default: the device's first).

    A kind that prices from a table gets `table` when given, else the one `build_table` builds
    (or resumes) at `path` (in memory without one) from `archs`, or `n_archs` seeded samples,
    in `passes` passes; `on_missing="measure"` times what the table lacks when predicting
    ("raise": an error listing it). `fit` = (archs, measured latencies in ms) fits the model
    on them; a kind that learns nothing from them is replaced by its learned form (`lut` by
    `lut+correction`). An unknown kind lists the registered ones.
    """
    cls = latency_model_class(kind)
    if fit is not None and cls.learned_kind is not None:
        cls = latency_model_class(cls.learned_kind)
    dtype = device.check_dtype(dtype or device.dtypes[0])
    if cls.table_kind is not None and table is None:
        table = build_table(
            kind,
            space,
            device,
            path,
            dtype=dtype,
            archs=archs,
            n_archs=n_archs,
            seed=seed,
            passes=passes,
            progress=progress,
        )
    model = cls.for_device(device, dtype, table, on_missing)
    if fit is not None:
        model = model.fit(space, *fit)
    return model

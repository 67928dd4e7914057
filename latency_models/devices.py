"""Devices: things that time a layer or a whole network, real, emulated or read from a table.

All devices share one interface, so LUT building, calibration and validation have one code path:

- `layer_specs(space, arch, dtype)`: the layers this device executes for an arch (after
  dead-branch elimination where its runtime does that),
- `measure_layers(specs, dtype)`: one `Measurement` per spec (milliseconds, with spread),
- `measure_arch(space, arch, dtype)`: one whole network,
- `metadata(dtype)`: what a LUT records so tables of different devices never mix,
- `prior_profile()`: the profile the cost model starts from when calibrated on this device.

`RealDevice` wraps a runtime of `latency_models.runtimes` (ONNX Runtime, ExecuTorch + XNNPACK,
PyTorch eager) and builds a stand-in module per spec (`spec_modules`). `EmulatedDevice` prices
specs with the cost model of a `DeviceProfile`: deterministic, zero spread. `TabularDevice`
(`latency_models.tabular`) reads whole-network latencies measured elsewhere.
"""

from __future__ import annotations

import logging
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from latency_models.costmodel import (
    COSTMODEL_VERSION,
    CostParams,
    layer_time_ms,
)
from latency_models.graph import RuntimeSpecs
from latency_models.measure import DEFAULT_PROTOCOL, Measurement, Protocol
from latency_models.profiles import DeviceProfile, host_cpu_profile
from latency_models.spec_modules import is_free, module_for_spec
from nas.core.files import json_digest
from nas.core.layers import LayerSpec
from nas.core.space import SearchSpace

if TYPE_CHECKING:
    from latency_models.runtimes import Runtime
    from latency_models.runtimes.base import Prepared

log = logging.getLogger(__name__)

__all__ = [
    "Device",
    "DeviceError",
    "EmulatedDevice",
    "RealDevice",
    "point_measurement",
]

ProgressFn = Callable[[int], None]


class DeviceError(ValueError):
    """A device asked for something it cannot do (the message says what it can do)."""


def point_measurement(
    ms: float,
    *,
    device: str,
    runtime: str,
    runtime_version: str,
    threads: int,
    dtype: str,
) -> Measurement:
    """A deterministic measurement: one value, zero spread."""
    return Measurement(
        median_ms=ms,
        p10_ms=ms,
        p90_ms=ms,
        mean_ms=ms,
        std_ms=0.0,
        min_ms=ms,
        count=1,
        warmup=0,
        rounds=1,
        converged=True,
        device=device,
        runtime=runtime,
        runtime_version=runtime_version,
        threads=threads,
        dtype=dtype,
    )


class Device(ABC):
    """The common interface (module docstring)."""

    name: str
    kind: str  # "real", "emulated" or "tabular"
    runtime: str
    threads: int = 1
    deterministic: bool = False

    @property
    @abstractmethod
    def runtime_version(self) -> str:
        """Runtime (or cost model) name and version, recorded in every LUT."""

    @property
    @abstractmethod
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this device runs, its default first."""

    def check_dtype(self, dtype: str) -> str:
        if dtype not in self.dtypes:
            raise DeviceError(
                f"device {self.name!r} does not run dtype {dtype!r}; valid dtypes: "
                f"{list(self.dtypes)}"
            )
        return dtype

    def layer_recipe(self, dtype: str) -> str:
        """How lone layers are built for timing, where it changed (`Runtime`); ""."""
        return ""

    def metadata(self, dtype: str) -> dict[str, Any]:
        """What identifies this device's measurements (LUT files refuse to mix others)."""
        meta: dict[str, Any] = {
            "device": self.name,
            "device_kind": self.kind,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "dtype": dtype,
        }
        recipe = self.layer_recipe(dtype)
        if recipe:  # absent where empty, as in tables written before the field existed
            meta["layer_recipe"] = recipe
        return meta

    def _point(self, ms: float, dtype: str) -> Measurement:
        """A deterministic measurement of `ms` on this device (zero spread)."""
        return point_measurement(
            ms,
            device=self.name,
            runtime=self.runtime,
            runtime_version=self.runtime_version,
            threads=self.threads,
            dtype=dtype,
        )

    def layer_specs(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> list[LayerSpec]:
        """The layers this device executes for `arch` (default: all the space's specs, dead
        branches included: the real runtimes here run them, measured in
        `profiles.host_cpu_profile`'s sources; an emulated device asks its profile)."""
        return space.layer_specs(arch, dtype)

    @abstractmethod
    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> list[Measurement]:
        """One measurement per spec, in order; `progress(n)` is called as n more finish."""

    @abstractmethod
    def measure_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Measurement:
        """One whole network."""

    def measure_archs(
        self, space: SearchSpace, archs: Sequence[Mapping[str, Any]], dtype: str = "fp32"
    ) -> list[Measurement]:
        return [self.measure_arch(space, a, dtype) for a in archs]

    def network_overhead_ms(self, dtype: str = "fp32") -> float:
        """The fixed cost of one inference call that this device's whole-network figure adds
        to the sum of its layers, where the device knows it (an emulated profile charges one);
        0 where it is unknown (on a real runtime a fitted correction finds it)."""
        return 0.0

    def prior_profile(self) -> DeviceProfile:
        """The profile the cost model starts from when it is calibrated on this device."""
        return host_cpu_profile(self.threads, name=self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------------------------
# Emulated
# --------------------------------------------------------------------------------------------


class EmulatedDevice(Device):
    """A `DeviceProfile` priced by the cost model (deterministic, zero spread)."""

    kind = "emulated"
    runtime = "emulated"
    deterministic = True

    def __init__(
        self,
        profile: DeviceProfile,
        params: CostParams | None = None,
        name: str | None = None,
        runtime_specs: RuntimeSpecs | None = None,
    ) -> None:
        self.profile = profile
        self.params = params or CostParams()
        self.name = name or f"{profile.name}-emulated"
        self.threads = profile.cores
        self.runtime_specs = runtime_specs or RuntimeSpecs()
        self._layer_cache: dict[LayerSpec, float] = {}

    @property
    def runtime_version(self) -> str:
        # Any change of figures or calibration changes the version: LUTs of it never mix.
        return (
            f"{COSTMODEL_VERSION} profile={json_digest(self.profile.to_dict())} "
            f"params={json_digest(self.params.to_dict())}"
        )

    @property
    def dtypes(self) -> tuple[str, ...]:
        return self.profile.dtypes

    @property
    def removes_dead_branches(self) -> bool:
        return self.params.dead_branches(self.profile)

    def with_params(self, params: CostParams, name: str | None = None) -> EmulatedDevice:
        """The same profile with other (e.g. calibrated) parameters."""
        return EmulatedDevice(self.profile, params, name or self.name, self.runtime_specs)

    def layer_specs(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> list[LayerSpec]:
        if self.removes_dead_branches:
            return self.runtime_specs(space, arch, dtype)
        return space.layer_specs(arch, dtype)

    def layer_ms(self, spec: LayerSpec) -> float:
        """Time of one spec (memoised: profile and parameters never change on an instance)."""
        ms = self._layer_cache.get(spec)
        if ms is None:
            ms = self._layer_cache[spec] = layer_time_ms(spec, self.profile, self.params)
        return ms

    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> list[Measurement]:
        self.check_dtype(dtype)
        out = [self._point(self.layer_ms(_as_dtype(s, dtype)), dtype) for s in specs]
        if progress is not None:
            progress(len(out))
        return out

    def arch_ms(self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32") -> float:
        self.check_dtype(dtype)
        specs = self.layer_specs(space, arch, dtype)
        return sum(self.layer_ms(s) for s in specs) + self.network_overhead_ms(dtype)

    def network_overhead_ms(self, dtype: str = "fp32") -> float:
        return float(self.params.network_overhead(self.profile))

    def measure_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Measurement:
        return self._point(self.arch_ms(space, arch, dtype), dtype)

    def prior_profile(self) -> DeviceProfile:
        return self.profile


def _as_dtype(spec: LayerSpec, dtype: str) -> LayerSpec:
    return spec if spec.dtype == dtype else spec.with_dtype(dtype)


# --------------------------------------------------------------------------------------------
# Real
# --------------------------------------------------------------------------------------------


class RealDevice(Device):
    """A runtime on this machine (`engine`, a `latency_models.runtimes.Runtime`), timing
    stand-in modules of layers, whole networks, or any module (`measure_module`).

    `name`, `threads` and `runtime` (the runtime's name: "onnxruntime", "executorch-xnnpack",
    "torch") are the engine's; `protocol` is how every measurement is taken.
    """

    kind = "real"
    RECENT_ARCHS = 100
    """Compiled networks kept in memory per space (a case of `benchmarks/latency_runtime.py`
    measures 80 archs pass after pass)."""

    def __init__(
        self,
        engine: Runtime,
        protocol: Protocol = DEFAULT_PROTOCOL,
        chunk_layers: int = 32,
    ) -> None:
        if chunk_layers < 1:
            raise ValueError(f"chunk_layers must be >= 1, got {chunk_layers}")
        self.engine = engine
        self.name = engine.name
        self.runtime = engine.runtime
        self.threads = engine.threads
        self.protocol = protocol
        self.chunk_layers = chunk_layers
        # compiled whole networks of the archs measured lately, per space object: measuring
        # an arch again (the next pass of an interleaved measurement) skips export and load
        self._recent: weakref.WeakKeyDictionary[SearchSpace, OrderedDict[Any, Prepared]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def runtime_version(self) -> str:
        return self.engine.version

    def layer_recipe(self, dtype: str) -> str:
        return self.engine.layer_recipe(dtype)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(self.engine.dtypes)

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Measurement:
        """Compile (or load from the artifact cache) and time any module at `input_shape`
        (batch first) with the device's protocol: what the compression chain times its models
        with. int8 calibrates on `calibration` (`(k * batch, *input_shape[1:])`) or on seeded
        random data."""
        self.check_dtype(dtype)
        return self.engine.measure_module(module, input_shape, dtype, calibration, self.protocol)

    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> list[Measurement]:
        """Stand-in modules timed `chunk_layers` at a time through the runtime's
        `measure_many` (XNNPACK lowers each chunk as one program); free ops cost zero."""
        self.check_dtype(dtype)
        out: list[Measurement | None] = [None] * len(specs)
        todo = [i for i, spec in enumerate(specs) if not is_free(spec)]
        for i in set(range(len(specs))) - set(todo):
            out[i] = self._point(0.0, dtype)
        if progress is not None and len(todo) < len(specs):
            progress(len(specs) - len(todo))
        for chunk, items in self._layer_chunks(specs, todo):
            results = self.engine.measure_many(items, dtype, self.protocol)
            for i, m in zip(chunk, results, strict=True):
                out[i] = m
            if progress is not None:
                progress(len(chunk))
        assert all(m is not None for m in out)
        return [m for m in out if m is not None]

    def _layer_chunks(
        self, specs: Sequence[LayerSpec], todo: Sequence[int]
    ) -> Iterator[tuple[list[int], list[tuple[nn.Module, tuple[int, ...]]]]]:
        for start in range(0, len(todo), self.chunk_layers):
            chunk = list(todo[start : start + self.chunk_layers])
            yield chunk, [module_for_spec(specs[i]) for i in chunk]

    def compile_layers(self, specs: Sequence[LayerSpec], dtype: str = "fp32") -> int:
        """Compile into the artifact cache exactly what `measure_layers(specs, dtype)` will
        time, timing nothing; returns how many artifacts were built now."""
        self.check_dtype(dtype)
        todo = [i for i, spec in enumerate(specs) if not is_free(spec)]
        return sum(
            self.engine.compile_many(items, dtype) for _, items in self._layer_chunks(specs, todo)
        )

    def prepare_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Prepared:
        """Compile one whole network (or load it from the artifact cache) without timing it:
        lowering, which is slow and need not be quiet, can run ahead of measuring, which must."""
        self.check_dtype(dtype)
        a = space.validate(arch)
        recent = self._recent.setdefault(space, OrderedDict())
        memo_key = (space.key(a), dtype)
        prepared = recent.get(memo_key)
        if prepared is not None:
            recent.move_to_end(memo_key)
            return prepared
        shape = (1, *space.input_shape(a))
        # seeded weights: the same arch lowers to the same (cached) artifact every time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = space.build(a)
        prepared = recent[memo_key] = self.engine.prepare(module, shape, dtype, None)
        while len(recent) > self.RECENT_ARCHS:
            recent.popitem(last=False)
        return prepared

    def measure_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Measurement:
        prepared = self.prepare_arch(space, arch, dtype)
        return self.engine.measure_prepared(prepared, self.protocol)

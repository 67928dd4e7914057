"""The cost model of emulated devices: a roofline per layer, with per-op-kind corrections.

For one leaf layer of kind k (a block kind such as OFA's `expanded_conv` is first split into
its leaf layers):

    compute_ms = work / (peak_macs_per_s(dtype) * efficiency[k])
    memory_ms  = bytes / bandwidth     (cache bandwidth when the working set fits the cache,
                                        memory bandwidth otherwise)
    time_ms    = compute_scale[k] * compute_ms   if compute_ms >= memory_ms   (compute-bound)
                 memory_scale[k]  * memory_ms    otherwise                    (memory-bound)
                 + overhead_ms[k]

and a network costs the sum of its layers plus `network_overhead_ms`. `work` is MACs for convs
and linear layers and element operations for the rest; `bytes` counts inputs, outputs and
weights in the dtype's element size. The side of the roof is decided by the profile's figures;
`CostParams` (scales and overheads, all per op kind and device, never per space) are 1 and the
profile's overheads until calibration fits them to measurements. Since a network's time is
linear in the parameters, calibration is a bounded linear least-squares problem
(`latency_models.calibrate`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latency_models.profiles import KINDS, DeviceProfile
from latency_models.spec_modules import FREE_OPS
from nas.core.blocks import conv_out, se_channels
from nas.core.files import FileProblem, read_json
from nas.core.layers import DTYPE_BYTES, LayerSpec

__all__ = [
    "COSTMODEL_VERSION",
    "CostParams",
    "LeafCost",
    "leaf_costs",
    "leaf_specs",
    "network_features",
    "op_kind",
]

COSTMODEL_VERSION = "roofline-v1"

#: Element operations per output element of an activation (relative to one MAC).
_ACT_OPS = {
    "none": 0.0,
    "relu": 1.0,
    "relu6": 2.0,
    "hardtanh": 2.0,
    "hswish": 4.0,
    "hsigmoid": 3.0,
    "sigmoid": 8.0,
    "silu": 9.0,
    "tanh": 8.0,
    "gelu": 12.0,
    "leaky_relu": 2.0,
}


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def op_kind(spec: LayerSpec) -> str:
    """The cost-model kind of a leaf spec (one of `profiles.KINDS`)."""
    op = spec.op
    if op == "conv":
        c_in = int(spec.input_shape[0])
        if spec.groups > 1:
            return "dwconv" if spec.groups == c_in else "gconv"
        return "conv1x1" if spec.kernel <= 1 else "conv"
    if op == "linear":
        return "linear"
    if op in ("avgpool", "maxpool"):
        return "pool"
    if op == "global_avgpool":
        return "gpool"
    if op in ("add", "mul", "concat", "sub", "div"):
        return "eltwise"
    if op == "act":
        return "act"
    if op == "bn":
        return "bn"
    if op == "copy":
        return "copy"
    return "other"


def leaf_specs(spec: LayerSpec) -> list[LayerSpec]:
    """Split a block kind into the leaf layers a runtime executes (leaves come back as is).

    `expanded_conv` (OFA's inverted bottleneck): [1x1 expand] -> k x k depthwise -> [SE:
    global pool, 1x1 reduce + ReLU, 1x1 expand + h-sigmoid, gate multiply] -> 1x1 project ->
    [residual add], following `nas.core.blocks.MBConv`.
    """
    if spec.op != "expanded_conv":
        return [spec]
    c, h, w = (int(s) for s in spec.input_shape)
    c_out, ho, wo = (int(s) for s in spec.output_shape)
    mid = spec.expand or c
    act, d = spec.activation, spec.dtype
    out: list[LayerSpec] = []
    if mid != c:
        out.append(LayerSpec("conv", (c, h, w), (mid, h, w), kernel=1, activation=act, dtype=d))
    ho2, wo2 = conv_out(h, spec.kernel, spec.stride), conv_out(w, spec.kernel, spec.stride)
    out.append(
        LayerSpec(
            "conv",
            (mid, h, w),
            (mid, ho2, wo2),
            kernel=spec.kernel,
            stride=spec.stride,
            groups=mid,
            activation=act,
            dtype=d,
        )
    )
    if spec.se:
        s = se_channels(mid)
        out += [
            LayerSpec("global_avgpool", (mid, ho2, wo2), (mid, 1, 1), dtype=d),
            LayerSpec("conv", (mid, 1, 1), (s, 1, 1), kernel=1, activation="relu", dtype=d),
            LayerSpec("conv", (s, 1, 1), (mid, 1, 1), kernel=1, activation="hsigmoid", dtype=d),
            LayerSpec("mul", (mid, ho2, wo2), (mid, ho2, wo2), dtype=d),
        ]
    out.append(LayerSpec("conv", (mid, ho2, wo2), (c_out, ho, wo), kernel=1, dtype=d))
    if spec.idskip:
        out.append(LayerSpec("add", (c_out, ho, wo), (c_out, ho, wo), dtype=d))
    return out


def _work_and_bytes(spec: LayerSpec) -> tuple[float, float, float]:
    """(work in MAC-equivalents, bytes moved, working-set bytes) of one leaf spec."""
    elem = DTYPE_BYTES[spec.dtype]
    n_in, n_out = _numel(spec.input_shape), _numel(spec.output_shape)
    act_work = n_out * _ACT_OPS.get(spec.activation, 2.0)
    weights = 0.0
    op = spec.op
    if op == "conv":
        c_in, c_out = int(spec.input_shape[0]), int(spec.output_shape[0])
        k = max(spec.kernel, 1)
        per_out = (c_in // max(spec.groups, 1)) * k * k
        work = n_out * per_out + act_work
        weights = c_out * per_out + c_out
        reads = n_in
    elif op == "linear":
        work = n_out * n_in + act_work
        weights = n_out * n_in + n_out
        reads = n_in
    elif op in ("avgpool", "maxpool"):
        work = n_out * max(spec.kernel, 1) ** 2
        reads = n_in
    elif op == "global_avgpool":
        work = float(n_in)
        reads = n_in
    elif op in ("add", "mul", "sub", "div"):
        work = float(n_out)
        reads = 2 * n_in
    elif op == "concat":
        work = 0.0
        reads = n_out
    elif op == "act":
        work = act_work or float(n_out)
        reads = n_in
    elif op == "bn":
        work = 2.0 * n_out
        reads = n_in
        weights = 2.0 * int(spec.input_shape[0])
    elif op == "copy":
        work = 0.0
        reads = n_in
    else:
        work = float(n_out)
        reads = n_in
    moved = (reads + n_out + weights) * elem
    return work, moved, moved


@dataclass(frozen=True)
class LeafCost:
    """The roofline of one leaf layer before calibration (milliseconds)."""

    kind: str
    compute_ms: float
    memory_ms: float

    @property
    def compute_bound(self) -> bool:
        return self.compute_ms >= self.memory_ms


def leaf_costs(spec: LayerSpec, profile: DeviceProfile) -> list[LeafCost]:
    """Roofline terms of every leaf of `spec` on `profile` (empty for free ops)."""
    if spec.op in FREE_OPS:
        return []
    out = []
    for leaf in leaf_specs(spec):
        kind = op_kind(leaf)
        work, moved, working_set = _work_and_bytes(leaf)
        peak = profile.peak_macs_per_s(leaf.dtype) * profile.efficiency[kind]
        bw = (
            profile.cache_bandwidth_gbs
            if working_set <= profile.cache_bytes
            else profile.dram_bandwidth_gbs
        )
        out.append(LeafCost(kind, 1e3 * work / peak, 1e3 * moved / (bw * 1e9)))
    return out


@dataclass(frozen=True)
class CostParams:
    """Calibrated corrections of one device, per op kind (never per space).

    Missing kinds take the defaults: scale 1, overhead = the profile's layer overhead.
    `removes_dead_branches`, where not None, overrides what the profile states (calibration
    with `dead_branches="auto"` sets the value that fitted better).
    """

    compute_scale: Mapping[str, float] = field(default_factory=dict)
    memory_scale: Mapping[str, float] = field(default_factory=dict)
    overhead_ms: Mapping[str, float] = field(default_factory=dict)
    network_overhead_ms: float | None = None
    removes_dead_branches: bool | None = None
    fitted_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("compute_scale", "memory_scale", "overhead_ms"):
            mapping = getattr(self, name)
            unknown = sorted(set(mapping) - set(KINDS))
            if unknown:
                raise ValueError(
                    f"CostParams.{name} has unknown op kinds {unknown}; valid: {KINDS}"
                )
            bad = {k: v for k, v in mapping.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"CostParams.{name} values must be finite and >= 0, got {bad}")

    def compute(self, kind: str) -> float:
        return float(self.compute_scale.get(kind, 1.0))

    def memory(self, kind: str) -> float:
        return float(self.memory_scale.get(kind, 1.0))

    def overhead(self, kind: str, profile: DeviceProfile) -> float:
        return float(self.overhead_ms.get(kind, profile.layer_overhead_us / 1e3))

    def network_overhead(self, profile: DeviceProfile) -> float:
        if self.network_overhead_ms is None:
            return profile.network_overhead_us / 1e3
        return float(self.network_overhead_ms)

    def dead_branches(self, profile: DeviceProfile) -> bool:
        if self.removes_dead_branches is None:
            return profile.removes_dead_branches
        return self.removes_dead_branches

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute_scale": dict(self.compute_scale),
            "memory_scale": dict(self.memory_scale),
            "overhead_ms": dict(self.overhead_ms),
            "network_overhead_ms": self.network_overhead_ms,
            "removes_dead_branches": self.removes_dead_branches,
            "fitted_on": dict(self.fitted_on),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown CostParams fields {unknown}; valid: {sorted(names)}")
        return cls(**dict(data))

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CostParams:
        """Read params saved by `save`; a file that is missing, a folder, empty, cut or of
        another kind raises `FileProblem` naming it."""
        redo = "calibrate again and save the params (CostParams.save), or name another file"
        data = read_json(path, "a CostParams JSON file (a JSON object)", redo)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise FileProblem(path, f"is not a CostParams JSON file: {err}", redo) from None


def layer_time_ms(spec: LayerSpec, profile: DeviceProfile, params: CostParams) -> float:
    """Time of one spec (all its leaves) on `profile` corrected by `params`."""
    total = 0.0
    for c in leaf_costs(spec, profile):
        side = (
            params.compute(c.kind) * c.compute_ms
            if c.compute_bound
            else params.memory(c.kind) * c.memory_ms
        )
        total += side + params.overhead(c.kind, profile)
    return total


#: Columns of `network_features`: per kind, compute-bound ms, memory-bound ms, layer count.
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{part}:{k}" for part in ("compute", "memory", "count") for k in KINDS
)


def spec_features(spec: LayerSpec, profile: DeviceProfile) -> np.ndarray:
    """`network_features` of one spec (a network's features are the sum over its specs)."""
    n = len(KINDS)
    out = np.zeros(3 * n)
    for c in leaf_costs(spec, profile):
        i = _KIND_INDEX[c.kind]
        if c.compute_bound:
            out[i] += c.compute_ms
        else:
            out[n + i] += c.memory_ms
        out[2 * n + i] += 1
    return out


_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


def network_features(
    specs: Iterable[LayerSpec],
    profile: DeviceProfile,
    cache: dict[LayerSpec, np.ndarray] | None = None,
) -> np.ndarray:
    """The linear features of a network's time: for each kind, the summed compute-bound and
    memory-bound roofline times (ms) and the number of leaf layers (see `FEATURE_NAMES`).

    `cache` (spec -> features, for this profile only) saves recomputing repeated layers.
    """
    out = np.zeros(3 * len(KINDS))
    for spec in specs:
        if cache is None:
            out += spec_features(spec, profile)
            continue
        f = cache.get(spec)
        if f is None:
            f = cache[spec] = spec_features(spec, profile)
        out += f
    return out


def params_vector(params: CostParams, profile: DeviceProfile) -> np.ndarray:
    """`params` in the order of `FEATURE_NAMES`, then the network overhead."""
    return np.array(
        [params.compute(k) for k in KINDS]
        + [params.memory(k) for k in KINDS]
        + [params.overhead(k, profile) for k in KINDS]
        + [params.network_overhead(profile)]
    )


def params_from_vector(
    theta: Sequence[float] | np.ndarray,
    removes_dead_branches: bool | None,
    fitted_on: Mapping[str, Any] | None = None,
) -> CostParams:
    n = len(KINDS)
    t = [float(v) for v in theta]
    return CostParams(
        compute_scale=dict(zip(KINDS, t[:n], strict=True)),
        memory_scale=dict(zip(KINDS, t[n : 2 * n], strict=True)),
        overhead_ms=dict(zip(KINDS, t[2 * n : 3 * n], strict=True)),
        network_overhead_ms=t[3 * n],
        removes_dead_branches=removes_dead_branches,
        fitted_on=dict(fitted_on or {}),
    )

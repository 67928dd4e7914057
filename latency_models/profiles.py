"""Device profiles: public figures of hardware we do not hold, for the emulated devices.

A profile is a plain frozen dataclass: clock, cores the runtime uses, multiply-accumulates per
cycle per dtype (SIMD lanes x FMA pipes; a dtype that is absent is not supported), cache size
and bandwidth, memory bandwidth, per-layer and per-network overheads, the compute efficiency
the runtime reaches per op kind, and whether the runtime removes dead branches (no default:
a fact of the device's runtime, see `DEAD_BRANCHES`). `sources` says where each figure comes
from. The cost model (`latency_models.costmodel`) turns a profile and
a layer spec into a time; calibration (`latency_models.calibrate`) corrects what the figures
get wrong from whole-network measurements.

Figures are vendor or datasheet numbers where those exist; bandwidths are *achievable* rates
(a fraction of the theoretical peak, stated in `sources`), and efficiencies are the usual
fractions of peak reached by mobile inference runtimes (TFLite / XNNPACK-class kernels):
estimates, not measurements. Add a device from its spec sheet in a few lines::

    from latency_models import profiles, register_emulated
    board = profiles.cpu_profile(
        "my-board", clock_ghz=2.0, simd_bits=128, fma_pipes=2, dram_bandwidth_gbs=8.0,
        cache_kib=1024, int8_dot_product=True, fp16_arithmetic=True,
        removes_dead_branches=True,  # runs TFLite models: the converter folds dead branches
        sources={"clock_ghz": "vendor datasheet, rev 3"},
    )
    register_emulated(board)          # now DEVICES has "my-board-emulated"
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nas.core.layers import DTYPE_BYTES

log = logging.getLogger(__name__)

__all__ = [
    "CPU_EFFICIENCY",
    "DEAD_BRANCHES",
    "KINDS",
    "PROFILES",
    "DeviceProfile",
    "cpu_profile",
    "host_cpu_profile",
    "profiles_markdown",
]

#: Op kinds the cost model prices separately (see `costmodel.op_kind`).
KINDS: tuple[str, ...] = (
    "conv",  # dense k x k conv, k > 1
    "conv1x1",  # pointwise conv (a GEMM)
    "dwconv",  # depthwise conv
    "gconv",  # grouped conv, 1 < groups < channels
    "linear",  # fully connected (a GEMV at batch 1)
    "pool",  # k x k average / max pool
    "gpool",  # global average pool
    "eltwise",  # add, mul, concat
    "act",  # a stand-alone activation
    "bn",  # a stand-alone batch norm
    "copy",  # a memory copy (layout change)
    "other",  # anything else the tracer saw
)

#: Fraction of peak MAC throughput CPU inference kernels reach per op kind (estimates from
#: published XNNPACK / TFLite kernel efficiencies: GEMM-shaped work reaches 60-80 % of peak,
#: depthwise and element-wise work is bound by memory and load/store ports).
CPU_EFFICIENCY: Mapping[str, float] = MappingProxyType(
    {
        "conv": 0.55,
        "conv1x1": 0.65,
        "dwconv": 0.25,
        "gconv": 0.35,
        "linear": 0.35,
        "pool": 0.25,
        "gpool": 0.25,
        "eltwise": 0.25,
        "act": 0.25,
        "bn": 0.25,
        "copy": 0.25,
        "other": 0.15,
    }
)


#: What `removes_dead_branches` means and does to pricing (the error of a profile that leaves
#: it out, and latency_models/PROFILES.md, quote it).
DEAD_BRANCHES = (
    "removes_dead_branches says whether the device's runtime drops work whose result cannot "
    "reach the output: ops whose result is multiplied by a constant zero (NAS-Bench-201's "
    "'none' edge) and ops whose result is unused. True prices only the layers that reach the "
    "output (TFLite's converter folds them; the Edge TPU compiler works on its output); False "
    "prices every layer the space builds (ONNX Runtime, ExecuTorch + XNNPACK and PyTorch eager "
    "run them all, measured: latency_models/PROFILES.md)"
)


class _Unstated:
    def __repr__(self) -> str:
        return "<not stated>"


# The default of a field that has none in meaning: leaving it out is an error that explains it.
_UNSTATED: Any = _Unstated()


def _dead_branches_problem(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    what = "is not stated" if value is _UNSTATED else f"must be True or False, got {value!r}"
    return (
        f"removes_dead_branches {what}. {DEAD_BRANCHES}. State what the runtime does; if you do "
        "not know, state False (the safe side: no arch is priced below work the device may "
        "still run) and let calibration decide from whole-network measurements: "
        "latency_models.calibrate(device, space, archs, latency_ms, dead_branches='auto') (the "
        "default) fits both values, keeps the one with the smaller error and reports both "
        "(CalibrationResult.describe())"
    )


def _check_kinds(mapping: Mapping[str, float], what: str, profile: str) -> None:
    unknown = sorted(set(mapping) - set(KINDS))
    if unknown:
        raise ValueError(
            f"profile {profile!r}: {what} has unknown op kinds {unknown}; valid: {KINDS}"
        )


@dataclass(frozen=True)
class DeviceProfile:
    """Public figures of one device as its runtime uses it (see the module docstring)."""

    name: str
    description: str
    kind: str  # "cpu", "gpu", "npu" or "asic"
    runtime: str  # the software the figures assume, e.g. "TFLite CPU, 1 thread"
    clock_ghz: float
    cores: int  # cores (or GPUs / arrays) the runtime uses
    macs_per_cycle: Mapping[str, float]  # per core, per dtype; absent dtype = not supported
    cache_bytes: int  # on-chip memory a layer's working set can live in
    cache_bandwidth_gbs: float
    dram_bandwidth_gbs: float  # achievable, not theoretical
    layer_overhead_us: float  # fixed cost of dispatching one layer
    network_overhead_us: float  # fixed cost of one inference call
    efficiency: Mapping[str, float] = field(default_factory=lambda: dict(CPU_EFFICIENCY))
    removes_dead_branches: bool = _UNSTATED  # no default in meaning: see DEAD_BRANCHES
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        dead = _dead_branches_problem(self.removes_dead_branches)
        if dead:
            problems.append(dead)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", self.name):
            problems.append(
                f"name must be lowercase letters, digits, '-', '_' or '.', got {self.name!r}"
            )
        if self.kind not in ("cpu", "gpu", "npu", "asic"):
            problems.append(f"kind must be cpu, gpu, npu or asic, got {self.kind!r}")
        for fname in (
            "clock_ghz",
            "cache_bandwidth_gbs",
            "dram_bandwidth_gbs",
        ):
            v = getattr(self, fname)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                problems.append(f"{fname} must be a finite number > 0, got {v!r}")
        for fname in ("layer_overhead_us", "network_overhead_us", "cache_bytes"):
            v = getattr(self, fname)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                problems.append(f"{fname} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.cores, int) or self.cores < 1:
            problems.append(f"cores must be an int >= 1, got {self.cores!r}")
        if not self.macs_per_cycle:
            problems.append("macs_per_cycle must name at least one dtype")
        for dtype, v in self.macs_per_cycle.items():
            if dtype not in DTYPE_BYTES:
                problems.append(
                    f"macs_per_cycle dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}"
                )
            elif not (math.isfinite(v) and v > 0):
                problems.append(f"macs_per_cycle[{dtype!r}] must be > 0, got {v!r}")
        for kind, v in self.efficiency.items():
            if kind in KINDS and not (0 < v <= 1):
                problems.append(f"efficiency[{kind!r}] must be in (0, 1], got {v!r}")
        if problems:
            raise ValueError(f"invalid device profile {self.name!r}: " + "; ".join(problems))
        _check_kinds(self.efficiency, "efficiency", self.name)
        missing = [k for k in KINDS if k not in self.efficiency]
        if missing:
            object.__setattr__(self, "efficiency", {**CPU_EFFICIENCY, **dict(self.efficiency)})

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this device computes in, fp32 first where supported."""
        order = ("fp32", "fp16", "bf16", "int8")
        return tuple(d for d in order if d in self.macs_per_cycle)

    def peak_macs_per_s(self, dtype: str) -> float:
        """Peak multiply-accumulates per second in `dtype` over the cores used."""
        self.check_dtype(dtype)
        return self.clock_ghz * 1e9 * self.cores * self.macs_per_cycle[dtype]

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.macs_per_cycle:
            raise ValueError(
                f"device profile {self.name!r} does not compute in {dtype!r}; "
                f"supported dtypes: {list(self.dtypes)}"
            )

    def replace(self, **changes: Any) -> DeviceProfile:
        """A copy with some figures changed (e.g. `cores=4`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["macs_per_cycle"] = dict(self.macs_per_cycle)
        d["efficiency"] = dict(self.efficiency)
        d["sources"] = dict(self.sources)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown device profile fields {unknown}; valid: {sorted(names)}")
        return cls(**dict(data))


def cpu_profile(
    name: str,
    *,
    clock_ghz: float,
    simd_bits: int,
    fma_pipes: int,
    dram_bandwidth_gbs: float,
    cache_kib: float,
    cores: int = 1,
    int8_dot_product: bool = False,
    fp16_arithmetic: bool = False,
    cache_bandwidth_gbs: float | None = None,
    layer_overhead_us: float = 4.0,
    network_overhead_us: float = 40.0,
    description: str = "",
    runtime: str = "TFLite / XNNPACK-class CPU kernels",
    efficiency: Mapping[str, float] | None = None,
    removes_dead_branches: bool = _UNSTATED,
    sources: Mapping[str, str] | None = None,
) -> DeviceProfile:
    """A CPU profile from spec-sheet figures.

    `removes_dead_branches` must be stated (`DEAD_BRANCHES` says what it means); leaving it out
    is an error that says how calibration can decide it.

    fp32 MACs per cycle per core = simd_bits / 32 * fma_pipes; fp16 doubles that where the core
    has half-precision arithmetic (Armv8.2 FP16); int8 is 4x fp32 with a dot-product instruction
    (Armv8.2 SDOT, x86 VNNI) and 2x without (widening multiply-accumulate). Cache bandwidth,
    unless given, is taken as 16 bytes per cycle (one 128-bit load per cycle).
    """
    fp32 = simd_bits / 32 * fma_pipes
    macs: dict[str, float] = {"fp32": fp32, "int8": fp32 * (4 if int8_dot_product else 2)}
    if fp16_arithmetic:
        macs["fp16"] = 2 * fp32
    return DeviceProfile(
        name=name,
        description=description or f"{name}: {cores} CPU core(s) at {clock_ghz} GHz",
        kind="cpu",
        runtime=runtime,
        clock_ghz=clock_ghz,
        cores=cores,
        macs_per_cycle=macs,
        cache_bytes=int(cache_kib * 1024),
        cache_bandwidth_gbs=cache_bandwidth_gbs or 16 * clock_ghz * cores,
        dram_bandwidth_gbs=dram_bandwidth_gbs,
        layer_overhead_us=layer_overhead_us,
        network_overhead_us=network_overhead_us,
        efficiency=dict(efficiency or CPU_EFFICIENCY),
        removes_dead_branches=removes_dead_branches,
        sources=dict(sources or {}),
    )


_TFLITE_DCE = (
    "TFLite models come from a TensorFlow graph whose constant folding replaces a product with a "
    "zero constant by zeros (Grappler, tensorflow/core/grappler/optimizers/constant_folding.cc: "
    "'simplify multiplication ... by zeros'), and the converter drops ops left without a "
    "consumer; HW-NAS-Bench's NB201 latencies, measured with TFLite, fit this"
)
_MEASURED = (
    ": calibrating on 125 cells of the {column} column of nb201.csv with dead_branches='auto' "
    "gives a relative RMSE of {removed} with dead branches removed vs {kept} kept "
    "(tests/latency_models/test_calibrate.py)"
)
_TFLITE_OTHER = (
    _TFLITE_DCE + " on Pixel 3 and Raspberry Pi 4 (see those profiles; this device runs the same "
    "runtime and is not in nb201.csv)"
)

_ARM_GUIDES = (
    "Arm Cortex-A7x Software Optimization Guides (ASIMD FMLA throughput per cycle); "
    "SDOT from Armv8.2-A dot-product extension"
)


def _catalogue() -> dict[str, DeviceProfile]:
    # removes_dead_branches: what each runtime does; the evidence is in its sources entry
    profiles = [
        cpu_profile(
            "pixel3",
            description="Google Pixel 3 class phone: one Snapdragon 845 big core "
            "(Kryo 385 Gold, Cortex-A75 derivative) at 2.8 GHz",
            clock_ghz=2.8,
            simd_bits=128,
            fma_pipes=2,
            int8_dot_product=True,
            fp16_arithmetic=True,
            cache_kib=256 + 2048 / 4,
            dram_bandwidth_gbs=10.0,
            runtime="TFLite CPU, 1 thread",
            removes_dead_branches=True,  # TFLite: x * 0 folded, unused ops dropped; pixel3_ms fits it
            sources={
                "clock_ghz": "Qualcomm Snapdragon 845 product brief: Kryo 385 Gold up to 2.8 GHz",
                "macs_per_cycle": "Cortex-A75: two 128-bit ASIMD pipes with FMA; Armv8.2 FP16 "
                "and SDOT; " + _ARM_GUIDES,
                "cache_bytes": "256 KiB private L2 per Kryo 385 Gold core + a quarter of the "
                "2 MiB shared L3 (Snapdragon 845 product brief)",
                "dram_bandwidth_gbs": "LPDDR4X-1866, 4x16-bit: 29.9 GB/s theoretical; one core "
                "reaches about a third (assumed)",
                "cores": "1 thread, as phone latency tables are usually measured (assumed)",
                "removes_dead_branches": _TFLITE_DCE
                + _MEASURED.format(column="pixel3_ms", removed=0.14, kept=0.31),
            },
        ),
        cpu_profile(
            "pixel2",
            description="Google Pixel 2 class phone: one Snapdragon 835 big core "
            "(Kryo 280 Gold, Cortex-A73 derivative) at 2.45 GHz",
            clock_ghz=2.45,
            simd_bits=128,
            fma_pipes=1,
            int8_dot_product=False,
            fp16_arithmetic=False,
            cache_kib=2048 / 4,
            dram_bandwidth_gbs=8.0,
            runtime="TFLite CPU, 1 thread",
            removes_dead_branches=True,  # TFLite, as pixel3
            sources={
                "clock_ghz": "Qualcomm Snapdragon 835 product brief: Kryo 280 up to 2.45 GHz",
                "macs_per_cycle": "Cortex-A73 (Armv8.0): one 128-bit FMA per cycle, no SDOT "
                "(int8 through widening MLA, 2x fp32); " + _ARM_GUIDES,
                "cache_bytes": "a quarter of the 2 MiB L2 shared by the 4 big cores",
                "dram_bandwidth_gbs": "LPDDR4X-1866, 4x16-bit: 29.9 GB/s theoretical; one core "
                "reaches about a quarter (assumed)",
                "removes_dead_branches": _TFLITE_OTHER,
            },
        ),
        cpu_profile(
            "note10",
            description="Samsung Galaxy Note10 class phone: one Snapdragon 855 prime core "
            "(Kryo 485 Prime, Cortex-A76 derivative) at 2.84 GHz (OFA's released LUT device; "
            "the Exynos 9825 variant differs)",
            clock_ghz=2.84,
            simd_bits=128,
            fma_pipes=2,
            int8_dot_product=True,
            fp16_arithmetic=True,
            cache_kib=512 + 2048 / 4,
            dram_bandwidth_gbs=12.0,
            runtime="TFLite CPU, 1 thread",
            removes_dead_branches=True,  # TFLite, as pixel3
            sources={
                "clock_ghz": "Qualcomm Snapdragon 855 product brief: Kryo 485 prime core 2.84 GHz",
                "macs_per_cycle": "Cortex-A76: two 128-bit ASIMD FMA pipes, FP16 and SDOT; "
                + _ARM_GUIDES,
                "cache_bytes": "512 KiB private L2 of the prime core + a quarter of the 2 MiB L3",
                "dram_bandwidth_gbs": "LPDDR4X-2133, 4x16-bit: 34.1 GB/s theoretical; one core "
                "reaches about a third (assumed)",
                "removes_dead_branches": _TFLITE_OTHER,
            },
        ),
        cpu_profile(
            "raspi4",
            description="Raspberry Pi 4 Model B: BCM2711, Cortex-A72 at 1.5 GHz, 1 thread",
            clock_ghz=1.5,
            simd_bits=128,
            fma_pipes=1,
            int8_dot_product=False,
            fp16_arithmetic=False,
            cache_kib=1024 / 4,
            dram_bandwidth_gbs=4.0,
            runtime="TFLite CPU, 1 thread",
            removes_dead_branches=True,  # TFLite: x * 0 folded, unused ops dropped; raspi4_ms fits it
            sources={
                "clock_ghz": "Raspberry Pi 4 product brief: BCM2711, quad Cortex-A72 @ 1.5 GHz",
                "macs_per_cycle": "Cortex-A72 (Armv8.0): one 128-bit FMA per cycle, no SDOT; "
                + _ARM_GUIDES,
                "cache_bytes": "a quarter of the 1 MiB shared L2 (BCM2711)",
                "dram_bandwidth_gbs": "LPDDR4-3200, 32-bit: 12.8 GB/s theoretical; single-core "
                "STREAM reports about 4 GB/s",
                "removes_dead_branches": _TFLITE_DCE
                + _MEASURED.format(column="raspi4_ms", removed=0.13, kept=0.34),
            },
        ),
        cpu_profile(
            "raspi5",
            description="Raspberry Pi 5: BCM2712, Cortex-A76 at 2.4 GHz, 1 thread",
            clock_ghz=2.4,
            simd_bits=128,
            fma_pipes=2,
            int8_dot_product=True,
            fp16_arithmetic=True,
            cache_kib=512 + 2048 / 4,
            dram_bandwidth_gbs=8.0,
            runtime="TFLite CPU, 1 thread",
            removes_dead_branches=True,  # TFLite, as raspi4
            sources={
                "clock_ghz": "Raspberry Pi 5 product brief: BCM2712, quad Cortex-A76 @ 2.4 GHz",
                "macs_per_cycle": "Cortex-A76: two 128-bit ASIMD FMA pipes, FP16 and SDOT; "
                + _ARM_GUIDES,
                "cache_bytes": "512 KiB private L2 + a quarter of the 2 MiB shared L3 (BCM2712)",
                "dram_bandwidth_gbs": "LPDDR4X-4267, 32-bit: 17.1 GB/s theoretical; one core "
                "reaches about half (assumed)",
                "removes_dead_branches": _TFLITE_OTHER,
            },
        ),
        DeviceProfile(
            name="jetson-tx2",
            description="NVIDIA Jetson TX2 class edge GPU: 256 Pascal CUDA cores at 1.3 GHz",
            kind="gpu",
            runtime="TensorRT-class GPU inference, batch 1",
            clock_ghz=1.3,
            cores=1,
            macs_per_cycle={"fp32": 256.0, "fp16": 512.0},
            cache_bytes=512 * 1024,
            cache_bandwidth_gbs=200.0,
            dram_bandwidth_gbs=40.0,
            layer_overhead_us=25.0,
            network_overhead_us=300.0,
            removes_dead_branches=False,  # TensorRT: not documented, so the safe side
            efficiency={
                "conv": 0.35,
                "conv1x1": 0.4,
                "dwconv": 0.08,
                "gconv": 0.15,
                "linear": 0.05,
                "pool": 0.1,
                "gpool": 0.05,
                "eltwise": 0.1,
                "act": 0.1,
                "bn": 0.1,
                "copy": 0.1,
                "other": 0.05,
            },
            sources={
                "macs_per_cycle": "Jetson TX2 module datasheet: 256-core Pascal GPU, 1.3 GHz; "
                "one FMA per core per cycle, fp16 at twice the rate; no int8 in TensorRT on TX2",
                "cache_bytes": "Pascal GP10B: 512 KiB L2",
                "dram_bandwidth_gbs": "128-bit LPDDR4-3733: 59.7 GB/s theoretical, about "
                "two thirds achievable (assumed)",
                "layer_overhead_us": "kernel launch and synchronisation, tens of microseconds "
                "per layer on Jetson (assumed)",
                "efficiency": "batch-1 inference keeps a GPU far from peak (assumed)",
                "removes_dead_branches": "unknown for TensorRT: its documented graph "
                "optimisations (removing layers whose output is unused, constant folding, "
                "fusions) do not say whether a computed tensor multiplied by zero is folded "
                "(doing so changes NaN and Inf results). Kept, the safe side: no arch is priced "
                "below work the device may still run; NB201 latencies measured on desktop GPUs "
                "(1080 Ti and Titan RTX columns of nb201.csv, PyTorch) also fit kept, relative "
                "RMSE 0.03-0.04 kept vs 0.11 removed (125 cells, this profile as the prior)",
            },
        ),
        DeviceProfile(
            name="edgetpu",
            description="Google Coral Edge TPU class int8 NPU: 64x64 systolic array at 500 MHz",
            kind="npu",
            runtime="Edge TPU compiler + runtime, int8 only, USB 3 host link",
            clock_ghz=0.5,
            cores=1,
            macs_per_cycle={"int8": 4096.0},
            cache_bytes=8 * 1024 * 1024,
            cache_bandwidth_gbs=64.0,
            dram_bandwidth_gbs=0.32,
            layer_overhead_us=2.0,
            network_overhead_us=250.0,
            removes_dead_branches=True,  # compiles the TFLite converter's output
            efficiency={
                "conv": 0.5,
                "conv1x1": 0.6,
                "dwconv": 0.02,
                "gconv": 0.1,
                "linear": 0.1,
                "pool": 0.01,
                "gpool": 0.01,
                "eltwise": 0.01,
                "act": 0.01,
                "bn": 0.01,
                "copy": 0.01,
                "other": 0.005,
            },
            sources={
                "macs_per_cycle": "Coral datasheet: 4 TOPS int8 = 2 TMAC/s; as a 64x64 array at "
                "500 MHz (public teardown figures)",
                "cache_bytes": "8 MiB on-chip parameter memory (Coral Edge TPU docs, 'model "
                "parameter caching')",
                "dram_bandwidth_gbs": "parameters beyond the on-chip memory stream over USB 3.0 "
                "(5 Gb/s raw, about 0.3 GB/s achieved)",
                "network_overhead_us": "one USB round trip per inference (assumed)",
                "efficiency": "systolic arrays suit dense convs; depthwise and element-wise work "
                "uses a small fraction of the array (assumed)",
                "removes_dead_branches": "the Edge TPU compiler compiles a quantized TFLite "
                "model (Coral docs, 'Edge TPU Compiler'), so the TFLite converter's folding of "
                "dead branches has happened before it (see pixel3); not measured here (nb201.csv "
                "has no Edge TPU column)",
            },
        ),
        DeviceProfile(
            name="eyeriss",
            description="Eyeriss-style ASIC: 168 PEs (12x14), row-stationary dataflow, 200 MHz, "
            "16-bit fixed point (priced as 2-byte 'fp16' elements)",
            kind="asic",
            runtime="Eyeriss dataflow (no software stack)",
            clock_ghz=0.2,
            cores=1,
            macs_per_cycle={"fp16": 168.0},
            cache_bytes=108 * 1024,
            cache_bandwidth_gbs=16.0,
            dram_bandwidth_gbs=1.0,
            layer_overhead_us=20.0,
            network_overhead_us=0.0,
            removes_dead_branches=False,  # no compiler: every layer runs; eyeriss_ms fits it
            efficiency={
                "conv": 0.8,
                "conv1x1": 0.5,
                "dwconv": 0.05,
                "gconv": 0.2,
                "linear": 0.3,
                "pool": 0.05,
                "gpool": 0.05,
                "eltwise": 0.05,
                "act": 0.05,
                "bn": 0.05,
                "copy": 0.05,
                "other": 0.05,
            },
            sources={
                "macs_per_cycle": "Chen et al., JSSC 2017: 168 PEs, one 16-bit MAC per PE per "
                "cycle, 100-250 MHz (200 MHz used for the AlexNet figures)",
                "cache_bytes": "108 KiB global buffer (same paper)",
                "dram_bandwidth_gbs": "a 64-bit off-chip link of the test chip, about 1 GB/s "
                "(approximate)",
                "layer_overhead_us": "per-layer configuration (scan chain) of the PE array "
                "(approximate)",
                "efficiency": "row-stationary reaches 80-90 % PE utilisation on dense convs; "
                "1x1 and depthwise convs leave most PEs idle (same paper; approximate)",
                "removes_dead_branches": "no compiler between the network and the PE array: "
                "every layer it is given runs. HW-NAS-Bench's Eyeriss NB201 estimates (a "
                "simulator of this dataflow) fit this"
                + _MEASURED.format(column="eyeriss_ms", removed=0.14, kept=0.023),
            },
        ),
    ]
    return {p.name: p for p in profiles}


#: The built-in catalogue, by profile name (the emulated device is `<name>-emulated`).
PROFILES: Mapping[str, DeviceProfile] = MappingProxyType(_catalogue())


# --------------------------------------------------------------------------------------------
# This machine, as the prior for real-runtime devices
# --------------------------------------------------------------------------------------------


def _cpuinfo() -> tuple[float, frozenset[str]]:
    from nas.backends import cpu_info

    info = cpu_info()
    try:
        ghz = float(info["cpu MHz"]) / 1000
    except (KeyError, ValueError):
        ghz = 2.5
    return ghz, frozenset(info.get("flags", "").split())


def _cache_kib() -> float:
    """L2 of cpu0 plus a share of L3 (from sysfs; 1 MiB if unknown)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    total = 0.0
    try:
        for index in base.glob("index*"):
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            kib = float(size[:-1]) * (1024 if size.endswith("M") else 1) if size[-1] in "KM" else 0
            if level == 2:
                total += kib
            elif level == 3:
                total += kib / max(os.cpu_count() or 1, 1)
    except (OSError, ValueError):
        return 1024.0
    return total or 1024.0


#: What the real runtimes here do with dead branches (the experiment is in PROFILES.md).
_HOST_DEAD_BRANCHES = (
    "ONNX Runtime, ExecuTorch + XNNPACK and PyTorch eager all run dead branches, measured on "
    "NB201 cells where a 3x3 conv reaches the output only through 'none' edges (15 such convs "
    "in the network, 52 convs in all): ONNX Runtime with every graph optimisation folds each "
    "x * 0 into the conv before it as all-zero weights and still runs all 52 convs; the XNNPACK "
    "delegate receives all 52 convs and every multiply; PyTorch eager runs what the module "
    "says. Timed (fastest of 12 interleaved runs), the network costs 1.37x (xnnpack-1t) and "
    "1.27x (ort-cpu-1t) its twin with those edges 'none' (1.45x the MACs), and one with 30 "
    "dead convs 2.61x and 2.45x (2.64x the MACs); PyTorch eager, bound by per-op overhead at "
    "this size, 1.14x and 1.19x"
)


def host_cpu_profile(threads: int = 1, name: str = "host") -> DeviceProfile:
    """This machine's CPU from /proc/cpuinfo and sysfs: the prior of real-runtime devices."""
    clock, flags = _cpuinfo()
    simd = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    return cpu_profile(
        name,
        description=f"this machine: {threads} thread(s), {simd}-bit SIMD at {clock:.2f} GHz",
        clock_ghz=round(clock, 3),
        cores=threads,
        simd_bits=simd,
        fma_pipes=2,
        int8_dot_product=vnni,
        fp16_arithmetic=False,
        cache_kib=_cache_kib(),
        dram_bandwidth_gbs=8.0 * threads,
        layer_overhead_us=3.0,
        network_overhead_us=20.0,
        runtime="a runtime on this machine",
        removes_dead_branches=False,  # every runtime here runs them: _HOST_DEAD_BRANCHES
        sources={
            "removes_dead_branches": _HOST_DEAD_BRANCHES,
            "clock_ghz": "/proc/cpuinfo 'cpu MHz'",
            "macs_per_cycle": "SIMD width from /proc/cpuinfo flags, two FMA pipes assumed",
            "cache_bytes": "sysfs: L2 of cpu0 plus an even share of L3",
            "dram_bandwidth_gbs": "8 GB/s per thread (assumed; calibration corrects it)",
        },
    )


_DEAD_BRANCHES_DOC = (
    "**Dead branches.** Every profile states `removes_dead_branches`, a fact of the device's",
    "runtime with no default: " + DEAD_BRANCHES + ".",
    "On NAS-Bench-201 the difference is large: a cell with a conv that reaches the output only",
    "through `none` edges costs that conv on a runtime that keeps dead branches and nothing on one",
    "that removes them. A profile that leaves it out is refused with what it means; where the",
    "runtime is not known, state `False` (no arch is then priced below work the device may still",
    "run) and calibrate with `dead_branches='auto'` (the default of `latency_models.calibrate`):",
    "it fits both values and reports both errors. `nas latency devices` shows the value of every",
    "device.",
    "",
    "The real runtimes here (the `host` prior of `ort-cpu-*`, `xnnpack-*`, `torch-cpu*`) keep",
    "them: " + _HOST_DEAD_BRANCHES + ".",
)


def profiles_markdown(profiles: Mapping[str, DeviceProfile] | None = None) -> str:
    """The catalogue as Markdown: figures, derived peaks and sources (latency_models/PROFILES.md)."""
    profiles = PROFILES if profiles is None else profiles
    lines = [
        "# Emulated device profiles",
        "",
        "Generated from `latency_models/profiles.py` by `profiles_markdown()` (a test keeps this",
        "file in step with the code). Figures are public vendor or paper numbers; bandwidths are",
        "achievable rates and efficiencies are estimates (see each source). Calibration",
        "(`latency_models.calibrate`) corrects them from whole-network measurements.",
        "",
        *_DEAD_BRANCHES_DOC,
        "",
        "| device | kind | clock GHz | cores | MACs/cycle/core | peak GMAC/s | cache KiB | "
        "cache GB/s | DRAM GB/s | layer / network overhead us | removes dead branches |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles.values():
        macs = ", ".join(f"{d} {v:g}" for d, v in p.macs_per_cycle.items())
        peaks = ", ".join(f"{d} {p.peak_macs_per_s(d) / 1e9:.0f}" for d in p.dtypes)
        lines.append(
            f"| `{p.name}-emulated` | {p.kind} | {p.clock_ghz:g} | {p.cores} | {macs} | {peaks} | "
            f"{p.cache_bytes / 1024:.0f} | {p.cache_bandwidth_gbs:g} | {p.dram_bandwidth_gbs:g} | "
            f"{p.layer_overhead_us:g} / {p.network_overhead_us:g} | "
            f"{'yes' if p.removes_dead_branches else 'no'} |"
        )
    for p in profiles.values():
        lines += ["", f"## `{p.name}-emulated`", "", p.description + f" ({p.runtime}).", ""]
        lines += [f"- **{field_name}**: {text}" for field_name, text in p.sources.items()]
        eff = ", ".join(f"{k} {v:g}" for k, v in p.efficiency.items())
        lines.append(f"- **efficiency** (fraction of peak per op kind): {eff}")
    return "\n".join(lines) + "\n"

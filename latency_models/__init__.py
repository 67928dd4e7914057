"""Devices (real runtimes, emulated profiles, tables of measurements), LUTs and latency models.

    import latency_models as lm
    phone = lm.get_device("pixel3-emulated")          # or "xnnpack-1t", "ort-cpu-1t", ...
    lut = lm.build_lut(space, phone, cache="runs/demo")
    model = lm.LUTSum(lut, phone)                       # .predict_arch(space, arch) -> ms

Names are looked up in two registries owned here: `DEVICES` (device factories) and
`LATENCY_MODELS` (predictor classes). Nothing is registered behind the user's back: a new
profile joins `DEVICES` through `register_emulated(profile)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from latency_models.calibrate import CalibrationResult, calibrate
from latency_models.costmodel import CostParams
from latency_models.devices import (
    Device,
    DeviceError,
    EmulatedDevice,
    RealDevice,
)
from latency_models.graph import RuntimeSpecs, pruned_layer_specs
from latency_models.kernels import (
    ArchKernelCache,
    build_kernel_lut,
    kernel_lut_path,
    supports_kernels,
)
from latency_models.lut import (
    LUT,
    CorruptLUTError,
    LUTError,
    LUTMismatchError,
    MissingKeysError,
    lut_path,
)
from latency_models.lut_build import (
    build_lut,
    compile_lut,
    fill_missing,
    pass_plan,
    reachable_specs,
)
from latency_models.measurements import ArchMeasurements
from latency_models.predictors import (
    CostModelPredictor,
    KernelSum,
    LatencyModel,
    LatencyPredictor,
    LUTCorrected,
    LUTSum,
    MacsProxy,
    NotFittedError,
    ParamsProxy,
    TableLatency,
)
from latency_models.profiles import PROFILES, DeviceProfile, cpu_profile, host_cpu_profile
from latency_models.spec_modules import SUPPORTED_OPS, UnsupportedSpecError, module_for_spec
from latency_models.tabular import TabularDevice
from latency_models.validate import ValidationReport, metrics, validate
from nas.core.registry import Registry

__all__ = [
    "DEVICES",
    "LATENCY_MODELS",
    "LUT",
    "NB201_COLUMNS",
    "PROFILES",
    "SUPPORTED_OPS",
    "ArchKernelCache",
    "ArchMeasurements",
    "CalibrationResult",
    "CorruptLUTError",
    "CostModelPredictor",
    "CostParams",
    "Device",
    "DeviceError",
    "DeviceProfile",
    "EmulatedDevice",
    "KernelSum",
    "LUTCorrected",
    "LUTError",
    "LUTMismatchError",
    "LUTSum",
    "LatencyModel",
    "LatencyPredictor",
    "MacsProxy",
    "MissingKeysError",
    "NotFittedError",
    "ParamsProxy",
    "RealDevice",
    "RuntimeSpecs",
    "TableLatency",
    "TabularDevice",
    "UnsupportedSpecError",
    "ValidationReport",
    "build_kernel_lut",
    "build_lut",
    "calibrate",
    "compile_lut",
    "cpu_profile",
    "device",
    "fill_missing",
    "get_device",
    "host_cpu_profile",
    "kernel_lut_path",
    "lut_path",
    "metrics",
    "module_for_spec",
    "pass_plan",
    "pruned_layer_specs",
    "reachable_specs",
    "register_emulated",
    "supports_kernels",
    "validate",
]

DEVICES: Registry[Device] = Registry("device")
LATENCY_MODELS: Registry[LatencyPredictor] = Registry("latency model")


def _real(name: str) -> Callable[..., Device]:
    def factory(**kwargs: Any) -> Device:
        from latency_models.runtimes import real_device

        return RealDevice(real_device(name), **kwargs)

    return factory


def _emulated(profile: DeviceProfile) -> Callable[..., Device]:
    def factory(params: CostParams | str | Path | None = None) -> Device:
        if isinstance(params, (str, Path)):
            params = CostParams.load(params)
        return EmulatedDevice(profile, params)

    return factory


def register_emulated(profile: DeviceProfile, *, replace: bool = False) -> str:
    """Add `<profile.name>-emulated` to `DEVICES`; returns the device name."""
    name = f"{profile.name}-emulated"
    DEVICES.register(name, _emulated(profile), f"emulated: {profile.description}", replace=replace)
    return name


def _register_builtins() -> None:
    from latency_models.runtimes import REAL_DEVICES

    helps = {
        "torch-cpu": "PyTorch eager on this CPU",
        "ort-cpu": "ONNX Runtime CPU execution provider",
        "xnnpack": "ExecuTorch with the XNNPACK delegate (what phones run)",
    }
    for name in REAL_DEVICES:
        stem = name.rsplit("-", 1)[0] if name.endswith("t") and name[-2].isdigit() else name
        threads = name.rsplit("-", 1)[1] if stem != name else "1t"
        DEVICES.register(name, _real(name), f"real: {helps.get(stem, stem)}, {threads}")
    for profile in PROFILES.values():
        register_emulated(profile)
    for column, (dev, profile_name) in NB201_COLUMNS.items():
        DEVICES.register(dev, _table(column, dev, profile_name), f"table: {column} of nb201.csv")


#: Latency columns of the shared NAS-Bench-201 table -> (device name, profile to calibrate).
NB201_COLUMNS: dict[str, tuple[str, str | None]] = {
    "pixel3_ms": ("nb201-pixel3", "pixel3"),
    "raspi4_ms": ("nb201-raspi4", "raspi4"),
    "eyeriss_ms": ("nb201-eyeriss", "eyeriss"),
    "fpga_ms": ("nb201-fpga", None),
    "gold_6226_ms": ("nb201-gold6226", None),
    "silver_4114_ms": ("nb201-silver4114", None),
    "1080ti_1_ms": ("nb201-1080ti", None),
    "titan_rtx_1_ms": ("nb201-titanrtx", None),
}


def _table(column: str, name: str, profile_name: str | None) -> Callable[..., Device]:
    def factory(path: str | Path, space: Any) -> Device:
        profile = PROFILES[profile_name] if profile_name else None
        dtype = profile.dtypes[0] if profile is not None else "fp32"
        return TabularDevice(path, column, space, name=name, profile=profile, dtype=dtype)

    return factory


for _name, _cls in (
    ("macs", MacsProxy),
    ("params", ParamsProxy),
    ("lut", LUTSum),
    ("lut+correction", LUTCorrected),
    ("costmodel", CostModelPredictor),
    ("table", TableLatency),
):
    LATENCY_MODELS.register(_name, _cls, (_cls.__doc__ or "").strip().splitlines()[0])

_register_builtins()


def get_device(name: str, **kwargs: Any) -> Device:
    """The registered device `name` (e.g. 'xnnpack-1t', 'pixel3-emulated'), built with kwargs
    (table devices need `path=` and `space=`)."""
    return DEVICES.get(name, **kwargs)


device = get_device

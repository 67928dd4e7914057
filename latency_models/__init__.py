"""Devices (real runtimes, emulated profiles, tables of measurements), LUTs and latency models.

    import latency_models as lm
    phone = lm.get_device("pixel3-emulated")          # or "xnnpack-1t", "ort-cpu-1t", ...
    model = lm.create_latency_model("lut", space, phone, path="runs/demo/lut.csv")
    model.predict_arch(space, arch)                     # ms

Names are looked up in two registries owned here: `DEVICES` (device factories, one signature:
`latency_models.registry`) and `LATENCY_MODELS` (latency-model kinds, built by
`create_latency_model`: `latency_models.factory`). Nothing is registered behind the user's
back: a new profile joins `DEVICES` through `register_emulated(profile)`.
"""

from __future__ import annotations

from latency_models.calibrate import CalibrationResult, calibrate
from latency_models.costmodel import CostParams
from latency_models.devices import (
    Device,
    DeviceError,
    EmulatedDevice,
    RealDevice,
)
from latency_models.factory import (
    LATENCY_MODELS,
    build_table,
    create_latency_model,
    latency_model_class,
    table_kinds,
    table_path,
)
from latency_models.graph import RuntimeSpecs, pruned_layer_specs
from latency_models.kernels import (
    ArchKernelCache,
    build_kernel_lut,
    kernel_lut_path,
    supports_kernels,
)
from latency_models.layer_pricing import layer_pricer
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
    LatencyModel,
    LatencyPredictor,
    MacsProxy,
    NotFittedError,
    ParamsProxy,
    TableLatency,
)
from latency_models.profiles import PROFILES, DeviceProfile, cpu_profile, host_cpu_profile
from latency_models.registry import (
    DEVICE_OPTIONS,
    DEVICES,
    NB201_COLUMNS,
    DeviceFactory,
    get_device,
    register_emulated,
)
from latency_models.spec_modules import SUPPORTED_OPS, UnsupportedSpecError, module_for_spec
from latency_models.table_sums import KernelSum, LUTCorrected, LUTSum
from latency_models.tabular import TabularDevice
from latency_models.validate import ValidationReport, metrics, validate

__all__ = [
    "DEVICES",
    "DEVICE_OPTIONS",
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
    "DeviceFactory",
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
    "build_table",
    "calibrate",
    "compile_lut",
    "cpu_profile",
    "create_latency_model",
    "device",
    "fill_missing",
    "get_device",
    "host_cpu_profile",
    "kernel_lut_path",
    "latency_model_class",
    "layer_pricer",
    "lut_path",
    "metrics",
    "module_for_spec",
    "pass_plan",
    "pruned_layer_specs",
    "reachable_specs",
    "register_emulated",
    "supports_kernels",
    "table_kinds",
    "table_path",
    "validate",
]


device = get_device

"""The devices users pick by name: the `DEVICES` registry, its one factory signature, the
built-in real, emulated and table devices.

Every registered factory is called with the same keywords (`DEVICE_OPTIONS`), each None when
not given; a device kind uses some of them and refuses the others:

- real devices (`xnnpack-1t`, `ort-cpu-2t`, `torch-cpu`, ...): `protocol=` (the measurement
  protocol, default `latency_models.measure.DEFAULT_PROTOCOL`);
- emulated devices (`<profile>-emulated`): `params=` (calibrated `CostParams`, or the path of
  a saved set);
- table devices (`nb201-pixel3`, ...): `table=` (the CSV of measurements, e.g. nb201.csv) and
  `space=` (the space whose archs its rows hold), both needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_models.costmodel import CostParams
from latency_models.devices import Device, DeviceError, EmulatedDevice, RealDevice
from latency_models.measure import DEFAULT_PROTOCOL
from latency_models.measure import Protocol as MeasurementProtocol
from latency_models.profiles import PROFILES, DeviceProfile
from latency_models.runtimes import OrtCPURuntime, Runtime, TorchRuntime, XnnpackRuntime
from latency_models.tabular import TabularDevice
from nas.core.registry import Registry
from nas.core.space import SearchSpace

__all__ = [
    "DEVICES",
    "DEVICE_OPTIONS",
    "NB201_COLUMNS",
    "DeviceFactory",
    "get_device",
    "register_emulated",
]

DEVICE_OPTIONS: tuple[str, ...] = ("space", "table", "params", "protocol")
"""The keywords every device factory is called with (None where not given)."""

DEVICES: Registry[Device] = Registry("device")

_OPTION_HELP: Mapping[str, str] = {
    "space": "space= (the space whose archs the table's rows hold)",
    "table": "table= (the CSV of measurements, e.g. nb201.csv)",
    "params": "params= (calibrated CostParams, or the path of a saved set)",
    "protocol": "protocol= (a latency_models.measure.Protocol)",
}


@dataclass(frozen=True)
class DeviceFactory:
    """How a registered device is built: `build` gets the options of `takes` that were given
    (those of `needs` always); any other option is an error naming what the kind takes."""

    name: str
    kind: str
    takes: tuple[str, ...]
    build: Callable[..., Device]
    needs: tuple[str, ...] = ()

    def __call__(
        self,
        *,
        space: SearchSpace | None = None,
        table: str | Path | None = None,
        params: CostParams | str | Path | None = None,
        protocol: MeasurementProtocol | None = None,
        **unknown: Any,
    ) -> Device:
        given = {
            k: v
            for k, v in {
                "space": space,
                "table": table,
                "params": params,
                "protocol": protocol,
            }.items()
            if v is not None
        }
        wrong = [*sorted(set(given) - set(self.takes)), *sorted(unknown)]
        missing = [k for k in self.needs if k not in given]
        if wrong or missing:
            takes = "; ".join(_OPTION_HELP[k] for k in self.takes) or "no options"
            problem = (
                f"does not take {', '.join(f'{k}=' for k in wrong)}"
                if wrong
                else f"needs {', '.join(f'{k}=' for k in missing)}"
            )
            raise DeviceError(f"device {self.name!r} ({self.kind}) {problem}; it takes {takes}")
        return self.build(**given)


def get_device(
    name: str,
    *,
    space: SearchSpace | None = None,
    table: str | Path | None = None,
    params: CostParams | str | Path | None = None,
    protocol: MeasurementProtocol | None = None,
    **unknown: Any,
) -> Device:
    """The registered device `name` (e.g. 'xnnpack-1t', 'pixel3-emulated', 'nb201-pixel3').

    Options (module docstring): `protocol=` for real devices, `params=` for emulated ones,
    `table=` and `space=` for table devices; any other is a `DeviceError` naming what the
    device's kind takes. An unknown name lists close matches.
    """
    return DEVICES.get(name, space=space, table=table, params=params, protocol=protocol, **unknown)


def _dead(removes: bool | None, how: str = "") -> str:
    """The help text's note of what the device does with dead branches (profiles.DEAD_BRANCHES)."""
    what = "unknown" if removes is None else "removed" if removes else "kept"
    return f"dead branches {what}{f' ({how})' if how else ''}"


def register_emulated(profile: DeviceProfile, *, replace: bool = False) -> str:
    """Add `<profile.name>-emulated` to `DEVICES`; returns the device name."""
    name = f"{profile.name}-emulated"

    def build(params: CostParams | str | Path | None = None) -> Device:
        if isinstance(params, (str, Path)):
            params = CostParams.load(params)
        return EmulatedDevice(profile, params)

    factory = DeviceFactory(name, "emulated", ("params",), build)
    text = f"emulated: {profile.description}; {_dead(profile.removes_dead_branches)}"
    DEVICES.register(name, factory, text, replace=replace)
    return name


#: Real devices: name -> (runtime, threads).
_REAL: Mapping[str, tuple[type[Runtime], int]] = {
    "torch-cpu": (TorchRuntime, 1),
    "torch-cpu-2t": (TorchRuntime, 2),
    "ort-cpu-1t": (OrtCPURuntime, 1),
    "ort-cpu-2t": (OrtCPURuntime, 2),
    "xnnpack-1t": (XnnpackRuntime, 1),
    "xnnpack-2t": (XnnpackRuntime, 2),
}
_RUNTIME_HELP: Mapping[type[Runtime], str] = {
    TorchRuntime: "PyTorch eager on this CPU",
    OrtCPURuntime: "ONNX Runtime CPU execution provider",
    XnnpackRuntime: "ExecuTorch with the XNNPACK delegate (what phones run)",
}


def _register_real(name: str, runtime: type[Runtime], threads: int) -> None:
    def build(protocol: MeasurementProtocol = DEFAULT_PROTOCOL) -> Device:
        # a new runtime per device: nothing is imported or built until a device is asked for
        return RealDevice(runtime(name, threads), protocol)

    factory = DeviceFactory(name, "real", ("protocol",), build)
    # measured: every runtime here runs dead branches (host_cpu_profile's source)
    text = f"real: {_RUNTIME_HELP[runtime]}, {threads}t; {_dead(False, 'measured')}"
    DEVICES.register(name, factory, text)


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


#: What the runtime behind each column does with dead branches, for the help text: the value
#: that fits the column better when calibrated with dead_branches="auto" (PROFILES.md). The
#: columns without a profile were fitted with the raspi5 and jetson-tx2 profiles as priors:
#: both gave the same value.
_TABLE_DEAD_BRANCHES: Mapping[str, bool] = {
    "pixel3_ms": True,
    "raspi4_ms": True,
    "eyeriss_ms": False,
    "fpga_ms": False,
    "gold_6226_ms": False,
    "silver_4114_ms": False,
    "1080ti_1_ms": False,
    "titan_rtx_1_ms": False,
}


def _register_table(column: str, name: str, profile_name: str | None) -> None:
    def build(table: str | Path, space: SearchSpace) -> Device:
        profile = PROFILES[profile_name] if profile_name else None
        dtype = profile.dtypes[0] if profile is not None else "fp32"
        return TabularDevice(table, column, space, name=name, profile=profile, dtype=dtype)

    factory = DeviceFactory(name, "table", ("table", "space"), build, needs=("table", "space"))
    dead = _dead(_TABLE_DEAD_BRANCHES[column], "fitted")
    DEVICES.register(name, factory, f"table: {column} of nb201.csv; {dead}")


def _register_builtins() -> None:
    for name, (runtime, threads) in _REAL.items():
        _register_real(name, runtime, threads)
    for profile in PROFILES.values():
        register_emulated(profile)
    for column, (name, profile_name) in NB201_COLUMNS.items():
        _register_table(column, name, profile_name)


_register_builtins()

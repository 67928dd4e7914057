"""Kernel tables: the kernels a runtime's optimiser makes of whole networks, each timed once.

A LUT of lone layers (`latency_models.lut`) prices what a space's code says; a runtime runs
what its optimiser made of the whole network, glue included. Where the two differ a lot (ONNX
Runtime on NAS-Bench-201: NCHWc reorders at layout boundaries, int8 islands joined by quantize
and dequantize nodes, ReLUs shared between branches), a table of the optimised graph's kernels
predicts better. `KernelSum` (in `latency_models.predictors`) sums it.

Building one needs whole networks: the kernels of an arch are found by optimising its network
(`RealDevice.prepare_arch`, then the runtime's `network_kernels`: about a second an arch on
ONNX Runtime), so a table covers the archs it was built from (every arch of a small space, or
a seeded sample) and a predictor measures the kernels of a new arch on the spot if asked.

The table is a LUT file (same format, crash-safe appends, passes, identity checks) whose layer
recipe names the kernel recipe, so a kernel table and a layer table of one device never mix.
Only runtimes that can name their kernels support it (`supports_kernels`): `ort-cpu-*` today.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import Device, RealDevice
from latency_models.lut import (
    LUT,
    LUTEntry,
    _Appender,
    _archs_for,
    _check_build_args,
    open_table,
    pass_plan,
)
from latency_models.runtimes.ort_kernels import COPIES, KernelSpec
from nas.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KERNEL_ARCHS",
    "KERNEL_RECIPE",
    "arch_kernels",
    "build_kernel_lut",
    "check_kernel_lut",
    "fill_missing_kernels",
    "kernel_lut_path",
    "kernel_metadata",
    "supports_kernels",
]

KERNEL_RECIPE = f"optimised-graph-kernels/2;copies={COPIES};private-weights"
DEFAULT_KERNEL_ARCHS = 100
"""Archs sampled for a kernel table of a space too large to enumerate (each costs an
optimisation of its whole network)."""


def supports_kernels(device: Device) -> bool:
    """Whether `device` can name the kernels its runtime runs for a network."""
    return isinstance(device, RealDevice) and hasattr(device.runtime_device, "network_kernels")


def _checked(device: Device) -> RealDevice:
    if not supports_kernels(device):
        raise ValueError(
            f"device {device.name!r} cannot name the kernels its runtime runs: kernel tables "
            "need a real runtime that exposes its optimised graph (ort-cpu-1t, ort-cpu-2t); "
            "use a layer LUT (build_lut) for the others"
        )
    assert isinstance(device, RealDevice)
    return device


def kernel_metadata(device: Device, dtype: str) -> dict[str, Any]:
    """A kernel table's identity: the device's, with the kernel recipe in its layer recipe."""
    meta = device.metadata(dtype)
    meta["layer_recipe"] = ";".join(r for r in (meta.get("layer_recipe", ""), KERNEL_RECIPE) if r)
    return meta


def kernel_lut_path(directory: str | Path, device: Device | str, dtype: str) -> Path:
    """The conventional file of a device's kernel table in a folder."""
    name = device if isinstance(device, str) else device.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(directory) / f"kernels_{safe}_{dtype}.csv"


def check_kernel_lut(lut: LUT, device: Device) -> None:
    """Raise `LUTMismatchError` unless `lut` is a kernel table of `device`."""
    lut.check_identity(kernel_metadata(device, lut.dtype), f"device {device.name!r} (kernels)")


def arch_kernels(
    device: Device, space: SearchSpace, arch: Mapping[str, Any], dtype: str
) -> list[KernelSpec]:
    """The kernels, in order, `device`'s runtime runs for `arch`'s network."""
    real = _checked(device)
    prepared = real.prepare_arch(space, arch, dtype)
    kernels: list[KernelSpec] = real.runtime_device.network_kernels(prepared)  # type: ignore[attr-defined]
    return kernels


def _measure(
    lut: LUT, device: RealDevice, kernels: Sequence[KernelSpec], appender: _Appender | None
) -> None:
    measured = device.runtime_device.measure_kernels(  # type: ignore[attr-defined]
        kernels, lut.dtype, device.protocol
    )
    entries = [LUTEntry.of(k.key, k.op, m) for k, m in zip(kernels, measured, strict=True)]
    if appender is not None:
        appender.append(entries)
    else:
        for e in entries:
            lut.add(e)


def build_kernel_lut(
    space: SearchSpace,
    device: Device,
    path: str | Path | None = None,
    *,
    dtype: str | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_kernels: int = 32,
    passes: int = 1,
    progress: bool = False,
) -> LUT:
    """Time every unique kernel of `archs` (default: every arch of a small space, else
    `n_archs` seeded samples, `DEFAULT_KERNEL_ARCHS` if not given) on `device`, in `passes`
    passes (as `build_lut`); rows go to `path` as measured and a table there is resumed."""
    real = _checked(device)
    dtype = real.check_dtype(dtype or real.dtypes[0])
    _check_build_args(batch_kernels, passes)
    if archs is None and n_archs is None and space.n_genotypes > DEFAULT_KERNEL_ARCHS:
        n_archs = DEFAULT_KERNEL_ARCHS
    fresh = LUT.for_device(real, dtype)
    fresh.metadata.update(kernel_metadata(real, dtype))
    lut, appender = open_table(fresh, path, f"device {real.name!r} (kernels)", "kernels")
    chosen = _archs_for(space, archs, n_archs, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen), desc=f"kernels of {space.name} archs", unit="arch")
    unique: dict[str, KernelSpec] = {}
    for a in chosen:
        for k in arch_kernels(real, space, a, dtype):
            unique.setdefault(k.key, k)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    plan = pass_plan(list(unique.values()), lut.pass_counts(), passes, batch_kernels)
    log.info(
        "%s on %s (%s): %d archs, %d unique kernels, %d kernel timings to do (%d passes)",
        space.name,
        real.name,
        dtype,
        len(chosen),
        len(unique),
        sum(map(len, plan)),
        passes,
    )
    for chunk in plan:
        _measure(lut, real, chunk, appender)
    spaces = set(lut.metadata.get("spaces", []))
    if space.name not in spaces:
        lut.metadata["spaces"] = sorted(spaces | {space.name})
        if path is not None:
            lut.save(path)
    return lut


def fill_missing_kernels(lut: LUT, device: Device, kernels: Sequence[KernelSpec]) -> list[str]:
    """Measure the kernels the table lacks (one pass), appended to its file if it has one."""
    real = _checked(device)
    check_kernel_lut(lut, real)
    todo = list({k.key: k for k in kernels if k.key not in lut}.values())
    if todo:
        appender = _Appender(lut, lut.path) if lut.path is not None else None
        _measure(lut, real, todo, appender)
        log.info("measured %d missing kernels on %s", len(todo), real.name)
    return [k.key for k in todo]

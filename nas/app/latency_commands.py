"""Plain functions behind `nas latency build` and `nas latency validate` (the CLI wires them).

They take objects (a space, a device), or a device name, and write into a folder; nothing here
parses arguments or prints: results are returned and logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency_models.devices import Device, EmulatedDevice
from latency_models.kernels import build_kernel_lut, kernel_lut_path, supports_kernels
from latency_models.lut import lut_path
from latency_models.lut_build import build_lut, compile_lut
from latency_models.measurements import ArchMeasurements
from latency_models.predictors import (
    CostModelPredictor,
    KernelSum,
    LatencyModel,
    LUTCorrected,
    LUTSum,
    MacsProxy,
    ParamsProxy,
)
from latency_models.tabular import TabularDevice
from latency_models.validate import ValidationReport, validate
from nas.core.space import SearchSpace, as_rng

log = logging.getLogger(__name__)

__all__ = ["cli_build_lut", "cli_validate", "disjoint_archs"]


def _device(device: Device | str, **kwargs: Any) -> Device:
    if isinstance(device, Device):
        return device
    from latency_models import get_device

    return get_device(device, **kwargs)


def _is_table(name: str) -> bool:
    from latency_models import DEVICES

    return name in DEVICES and DEVICES.describe(name).startswith("table:")


def cli_build_lut(
    space: SearchSpace,
    device: Device | str,
    out: str | Path,
    *,
    dtype: str | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_layers: int = 32,
    progress: bool = True,
    passes: int = 1,
    compile_only: bool = False,
    kernels: bool = False,
) -> Path:
    """`nas latency build --space S --device D [--dtype] [--archs N] [--seed] [--passes N]
    [--compile-only] --out DIR|FILE`.

    Measures every unique layer of `space` reachable in a small space (else in `n_archs`
    seeded samples, 1,000 by default) on `device`, in `passes` passes, and writes the LUT CSV.
    `out` is a folder (the file is `lut_<device>_<dtype>.csv` inside) or a `.csv` path.
    Resumes a table already there; refuses one of another device, runtime, threads or dtype.
    `compile_only` compiles the programs the build will time into the artifact cache and
    measures nothing (`compile_lut`). `kernels` builds the device's kernel table instead
    (`latency_models.kernels`: the kernels its runtime's optimiser makes of `n_archs` sampled
    whole networks, `kernels_<device>_<dtype>.csv`). Returns the file.
    """
    dev = _device(device)
    dtype = dev.check_dtype(dtype or dev.dtypes[0])
    out = Path(out)
    t0 = time.perf_counter()
    if kernels:
        if compile_only:
            raise ValueError(
                "--compile-only applies to layer LUTs (programs lowered ahead); a kernel table "
                "compiles nothing worth doing ahead: build it directly"
            )
        path = out if out.suffix == ".csv" else kernel_lut_path(out, dev, dtype)
        table = build_kernel_lut(
            space,
            dev,
            path,
            dtype=dtype,
            n_archs=n_archs,
            seed=seed,
            passes=passes,
            batch_kernels=batch_layers,
            progress=progress,
        )
        log.info(
            "kernel table of %s on %s (%s): %d kernels in %s (%.1f s)",
            space.name,
            dev.name,
            dtype,
            len(table),
            path,
            time.perf_counter() - t0,
        )
        return path
    path = out if out.suffix == ".csv" else lut_path(out, dev, dtype)
    # compile_lut takes build_lut's arguments, so that it compiles what the build will time
    same: dict[str, Any] = {
        "dtype": dtype,
        "n_archs": n_archs,
        "seed": seed,
        "batch_layers": batch_layers,
        "passes": passes,
    }
    if compile_only:
        if not hasattr(dev, "compile_layers"):
            log.info("%s compiles nothing: its LUT is built by measuring alone", dev.name)
            return path
        built = compile_lut(space, dev, path, **same)
        log.info(
            "compiled %d program(s) for the LUT of %s on %s (%s) in %.1f s; the build of %s "
            "finds them in the artifact cache",
            built,
            space.name,
            dev.name,
            dtype,
            time.perf_counter() - t0,
            path,
        )
        return path
    lut = build_lut(space, dev, path, progress=progress, **same)
    log.info(
        "LUT of %s on %s (%s): %d layers in %s (%.1f s)",
        space.name,
        dev.name,
        dtype,
        len(lut),
        path,
        time.perf_counter() - t0,
    )
    return path


def disjoint_archs(
    space: SearchSpace,
    n_fit: int,
    n_test: int,
    seed: int = 0,
    pool: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n_fit` and `n_test` archs with distinct keys, no key in both (seeded).

    Drawn from `pool` (e.g. the archs a table holds) when given, else sampled from the space.
    """
    rng = as_rng(seed)
    need = n_fit + n_test
    chosen: dict[str, dict[str, Any]] = {}
    if pool is not None:
        order = rng.permutation(len(pool))
        for i in order:
            a = dict(space.validate(pool[int(i)]))
            chosen.setdefault(space.key(a), a)
            if len(chosen) == need:
                break
    else:
        for _ in range(100 * need):
            a = dict(space.sample(rng))
            chosen.setdefault(space.key(a), a)
            if len(chosen) == need:
                break
    if len(chosen) < need:
        raise ValueError(
            f"need {need} distinct archs ({n_fit} to fit, {n_test} to test) but found only "
            f"{len(chosen)} in space {space.name!r}"
        )
    archs = list(chosen.values())
    return archs[:n_fit], archs[n_fit:]


def cli_validate(
    space: SearchSpace,
    measured: Device | str,
    out: str | Path,
    *,
    model_device: Device | str | None = None,
    dtype: str | None = None,
    n_fit: int = 100,
    n_test: int = 200,
    seed: int = 0,
    lut_archs: int | None = None,
    progress: bool = True,
    **device_kwargs: Any,
) -> ValidationReport:
    """`nas latency validate --space S --device D [--model-device M] [--fit N] [--test N]`.

    Compares, on `n_test` archs, the MACs and params proxies, the LUT sum, the LUT sum with a
    learned correction, the cost model (spec-only and calibrated) and, where the device names
    its runtime's kernels (ONNX Runtime), the kernel sum (fitted line) with whole-network
    latencies from `measured`: a real device (measured now, cached in `out/measurements.csv`
    so a run resumes) or a table device (`device_kwargs` give its `path=`; the space is
    passed for you). Everything fitted is fitted on `n_fit` other archs. LUTs are built on
    `model_device` (default: `measured` itself when real, the table's emulated profile when a
    table) into `out/`. Writes validation.md/.json/.png and returns the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(measured, str) and _is_table(measured):
        device_kwargs.setdefault("space", space)  # a table's archs are parsed by the space
    meas = _device(measured, **device_kwargs)
    if isinstance(meas, EmulatedDevice):
        raise ValueError(
            f"validate needs real measurements; {meas.name!r} is emulated (pass a real device "
            "such as 'xnnpack-1t' or a table device such as 'nb201-pixel3')"
        )
    dtype = meas.check_dtype(dtype or meas.dtypes[0])
    if isinstance(meas, TabularDevice):
        fit, test = disjoint_archs(space, n_fit, n_test, seed, pool=meas.archs())
        y_fit = np.array(meas.latencies_ms(fit))
        y_test = np.array(meas.latencies_ms(test))
        default_model: Device = EmulatedDevice(meas.prior_profile())
    else:
        fit, test = disjoint_archs(space, n_fit, n_test, seed)
        store = ArchMeasurements(out / "measurements.csv")
        y_fit = np.array(store.measure(meas, space, fit, dtype, progress=progress))
        y_test = np.array(store.measure(meas, space, test, dtype, progress=progress))
        default_model = meas
    model = _device(model_device) if model_device is not None else default_model
    model_dtype = dtype if dtype in model.dtypes else model.dtypes[0]
    lut = build_lut(
        space,
        model,
        lut_path(out, model, model_dtype),
        dtype=model_dtype,
        archs=[*fit, *test] if lut_archs is None else None,
        n_archs=lut_archs,
        seed=seed,
        progress=progress,
    )
    predictors: dict[str, LatencyModel] = {
        "macs": MacsProxy(meas.name, dtype).fit(space, fit, y_fit),
        "params": ParamsProxy(meas.name, dtype).fit(space, fit, y_fit),
        "lut": LUTSum(lut, model, on_missing="measure"),
        "lut+correction": LUTCorrected(lut, model, on_missing="measure").fit(space, fit, y_fit),
        "costmodel (spec only)": CostModelPredictor(model, model_dtype),
        "costmodel (calibrated)": CostModelPredictor(model, model_dtype).fit(space, fit, y_fit),
    }
    kernel_table = None
    if supports_kernels(model):
        # the kernels the runtime's optimiser makes of each network (ONNX Runtime)
        kernel_table = build_kernel_lut(
            space,
            model,
            kernel_lut_path(out, model, model_dtype),
            dtype=model_dtype,
            archs=[*fit, *test],
            progress=progress,
        )
        predictors["kernels"] = KernelSum(kernel_table, model).fit(space, fit, y_fit)
    report = validate(
        predictors,
        space,
        test,
        y_test,
        dtype=dtype,
        title=f"{space.name}, {dtype}: {len(fit)} archs to fit, {len(test)} to test",
        measured_on=meas.name,
        out_dir=out,
    )
    (out / "validation_config.json").write_text(
        json.dumps(
            {
                "space": space.name,
                "measured": meas.name,
                "model_device": model.name,
                "dtype": dtype,
                "n_fit": n_fit,
                "n_test": n_test,
                "seed": seed,
                "lut": str(lut.path),
                "lut_layers": len(lut),
                "kernel_table": str(kernel_table.path) if kernel_table is not None else None,
                "kernels": len(kernel_table) if kernel_table is not None else None,
            },
            indent=1,
        )
    )
    return report

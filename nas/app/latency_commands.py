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

import latency_models as lm
from latency_models import (
    LUT,
    ArchMeasurements,
    Device,
    EmulatedDevice,
    LatencyModel,
    TabularDevice,
    ValidationReport,
    validate,
)
from nas.core.space import SearchSpace, as_rng

log = logging.getLogger(__name__)

__all__ = ["cli_build_lut", "cli_validate", "disjoint_archs"]


def _device(device: Device | str, **options: Any) -> Device:
    return device if isinstance(device, Device) else lm.get_device(device, **options)


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
    kind = "kernels" if kernels else "lut"
    out = Path(out)
    path = out if out.suffix == ".csv" else lm.table_path(kind, out, dev, dtype)
    # compile_lut takes build_lut's arguments, so that it compiles what the build will time
    same: dict[str, Any] = {
        "dtype": dtype,
        "n_archs": n_archs,
        "seed": seed,
        "batch_layers": batch_layers,
        "passes": passes,
    }
    t0 = time.perf_counter()
    if compile_only:
        _compile_only(space, dev, path, kernels, same)
    else:
        table = lm.build_table(kind, space, dev, path, progress=progress, **same)
        log.info(
            "%s of %s on %s (%s): %d %s in %s (%.1f s)",
            "kernel table" if kernels else "LUT",
            space.name,
            dev.name,
            dtype,
            len(table),
            "kernels" if kernels else "layers",
            path,
            time.perf_counter() - t0,
        )
    return path


def _compile_only(
    space: SearchSpace, dev: Device, path: Path, kernels: bool, same: dict[str, Any]
) -> None:
    if kernels:
        raise ValueError(
            "--compile-only applies to layer LUTs (programs lowered ahead); a kernel table "
            "compiles nothing worth doing ahead: build it directly"
        )
    if not hasattr(dev, "compile_layers"):
        log.info("%s compiles nothing: its LUT is built by measuring alone", dev.name)
        return
    t0 = time.perf_counter()
    built = lm.compile_lut(space, dev, path, **same)
    log.info(
        "compiled %d program(s) for the LUT of %s on %s (%s) in %.1f s; the build of %s "
        "finds them in the artifact cache",
        built,
        space.name,
        dev.name,
        same["dtype"],
        time.perf_counter() - t0,
        path,
    )


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
    table: str | Path | None = None,
    model_device: Device | str | None = None,
    dtype: str | None = None,
    n_fit: int = 100,
    n_test: int = 200,
    seed: int = 0,
    lut_archs: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """`nas latency validate --space S --device D [--table CSV] [--model-device M] [--fit N]
    [--test N]`.

    Compares, on `n_test` archs, the MACs and params proxies, the LUT sum, the LUT sum with a
    learned correction, the cost model (spec only and calibrated) and, where the device names
    its runtime's kernels (ONNX Runtime), the kernel sum (fitted line) with whole-network
    latencies from `measured`: a real device (measured now, cached in `out/measurements.csv`
    so a run resumes) or a table device (`table` is its CSV, its rows archs of `space`).
    Everything fitted is fitted on `n_fit` other archs. LUTs are built on `model_device`
    (default: `measured` itself when real, the table's emulated profile when a table) into
    `out/`. Writes validation.md/.json/.png and returns the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {} if table is None else {"table": table, "space": space}
    meas = _device(measured, **options)
    if isinstance(meas, EmulatedDevice):
        raise ValueError(
            f"validate needs real measurements; {meas.name!r} is emulated (pass a real device "
            "such as 'xnnpack-1t' or a table device such as 'nb201-pixel3')"
        )
    dtype = meas.check_dtype(dtype or meas.dtypes[0])
    fit, test, y_fit, y_test = _measured(space, meas, dtype, n_fit, n_test, seed, out, progress)
    default_model = EmulatedDevice(meas.prior_profile()) if meas.kind == "tabular" else meas
    model = _device(model_device) if model_device is not None else default_model
    model_dtype = dtype if dtype in model.dtypes else model.dtypes[0]
    lut = lm.build_table(
        "lut",
        space,
        model,
        lm.table_path("lut", out, model, model_dtype),
        dtype=model_dtype,
        archs=[*fit, *test] if lut_archs is None else None,
        n_archs=lut_archs,
        seed=seed,
        progress=progress,
    )
    kernels_of = ([*fit, *test], out, progress)
    predictors = _predictors(space, meas, dtype, model, lut, (fit, y_fit), kernels_of)
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
    kernel_table: LUT | None = getattr(predictors.get("kernels"), "lut", None)
    config = {
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
    }
    (out / "validation_config.json").write_text(json.dumps(config, indent=1))
    return report


def _predictors(
    space: SearchSpace,
    meas: Device,
    dtype: str,
    model: Device,
    lut: LUT,
    measured: tuple[list[dict[str, Any]], np.ndarray],
    kernels_of: tuple[list[dict[str, Any]], Path, bool],
) -> dict[str, LatencyModel]:
    """The latency models `cli_validate` compares: the proxies fitted to `meas`'s latencies,
    the rest priced on `model` (its layer LUT `lut`, and where its runtime names its kernels
    a kernel table of the archs of `kernels_of` = (archs, folder, progress)), fitted on
    `measured` where they learn."""

    def create(kind: str, on: Device, **kw: Any) -> LatencyModel:
        return lm.create_latency_model(kind, space, on, dtype=kw.pop("dtype", lut.dtype), **kw)

    predictors: dict[str, LatencyModel] = {
        "macs": create("macs", meas, dtype=dtype, fit=measured),
        "params": create("params", meas, dtype=dtype, fit=measured),
        "lut": create("lut", model, table=lut),
        "lut+correction": create("lut+correction", model, table=lut, fit=measured),
        "costmodel (spec only)": create("costmodel", model),
        "costmodel (calibrated)": create("costmodel", model, fit=measured),
    }
    if lm.supports_kernels(model):
        # the kernels the runtime's optimiser makes of each network (ONNX Runtime)
        archs, out, progress = kernels_of
        predictors["kernels"] = create(
            "kernels",
            model,
            path=lm.table_path("kernels", out, model, lut.dtype),
            archs=archs,
            progress=progress,
            fit=measured,
            on_missing="raise",
        )
    return predictors


def _measured(
    space: SearchSpace,
    meas: Device,
    dtype: str,
    n_fit: int,
    n_test: int,
    seed: int,
    out: Path,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Archs to fit and to test, with their whole-network latencies on `meas`: read from a
    table device (drawn from the archs it holds), or measured now (cached in
    `out/measurements.csv`, so a run resumes)."""
    if isinstance(meas, TabularDevice):
        fit, test = disjoint_archs(space, n_fit, n_test, seed, pool=meas.archs())
        return fit, test, np.array(meas.latencies_ms(fit)), np.array(meas.latencies_ms(test))
    fit, test = disjoint_archs(space, n_fit, n_test, seed)
    store = ArchMeasurements(out / "measurements.csv")
    y_fit = np.array(store.measure(meas, space, fit, dtype, progress=progress))
    y_test = np.array(store.measure(meas, space, test, dtype, progress=progress))
    return fit, test, y_fit, y_test

"""Latency models against real runtimes on this machine: ONNX Runtime and ExecuTorch + XNNPACK.

For each device (`ort-cpu-1t`, `xnnpack-1t`) and each case (tiny and nb201 in fp32 and int8 on
50 test archs; mobilenetv3 and fbnet in fp32 on 20), whole networks are measured in interleaved
passes (every arch of the case once per pass, then the next pass): a test arch's latency is its
minimum over passes 0, 2, 4 and its retest latency the minimum over passes 1, 3, 5, so the two
are independent estimates taken at alternating times (their agreement is the noise floor);
fitting archs take the minimum over three passes, each taken right after test passes 0, 2, 4
(every learned correction is fitted on those, never on test archs). `latency_models.measure`
says why the minimum. A LUT of the case's layers is built on the same device (build time and
unique layers reported). Predictors side by side: MACs line (the baseline), LUT sum, LUT sum
+ learned correction, cost model from this CPU's spec figures (uncalibrated) and calibrated on
the fitting archs. Finally the cost model calibrated on nb201
alone predicts fbnet and mobilenetv3 unchanged.

Everything measured is kept under --out (arch measurements CSV, LUT CSVs; compiled artifacts
in the runtimes' cache, --cache to move it), so an interrupted run resumes where it stopped.

    python benchmarks/latency_runtime.py --out runs/bench/latency_runtime [--quick] [--cache DIR]

Targets: Kendall tau >= 0.95 and >= 95 % of test archs within +-10 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latency_models as lm
import search_spaces
from benchmarks._latency_runtime_report import (
    PASSES,
    carry_lut_build_times,
    median_taus,
    merge_results,
    write_results,
)
from latency_models.validate import metrics
from nas.app.config import git_commit
from nas.app.latency_commands import disjoint_archs

log = logging.getLogger("latency_runtime")
ROOT = Path(__file__).resolve().parents[1]

# (space, dtype, test archs, fitting archs)
FULL_PLAN = [
    ("tiny", "fp32", 50, 30),
    ("tiny", "int8", 50, 30),
    ("nb201", "fp32", 50, 30),
    ("nb201", "int8", 50, 30),
    ("mobilenetv3", "fp32", 20, 15),
    ("fbnet", "fp32", 20, 15),
]
QUICK_PLAN = [("tiny", "fp32", 6, 6), ("nb201", "fp32", 6, 6)]
DEVICES = ("ort-cpu-1t", "xnnpack-1t")


def _space(name: str) -> Any:
    return search_spaces.get_space(name)


def _case_archs(
    space_name: str, n_test: int, n_fit: int, seed: int
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """A case's space, fitting archs and test archs (disjoint, seeded)."""
    space = _space(space_name)
    fit, test = disjoint_archs(space, n_fit, n_test, seed=seed)
    return space, fit, test


LUT_PASSES = 3
"""Passes over every LUT layer (each layer's fastest kept: `latency_models.lut`): a table
measured in one pass kept a host slowdown in a whole chunk of layers (mobilenetv3 on
xnnpack-1t: a chunk 1.4x slow, so the LUT sum over-predicted 15 of 20 test archs by 9-48 %)."""


def fitting_passes(passes: int, test_stored: int, fit_stored: int) -> list[int]:
    """The fitting archs' passes of a case with `passes` per estimate: as many as the test
    estimate, so both are minima over as many draws, fitting pass i measured right after test
    pass 2i (in the test estimate's windows). So a new fitting pass is taken only with its test
    pass: a case stored before this rule (5 + 5 test passes, 3 fitting) keeps its 3 rather than
    take two more now, days after their test passes."""
    return [i for i in range(passes) if i < fit_stored or 2 * i >= test_stored]


def run_case(
    device: lm.Device,
    space_name: str,
    dtype: str,
    n_test: int,
    n_fit: int,
    out: Path,
    store: lm.ArchMeasurements,
    seed: int,
    passes: int = PASSES,
    lut_passes: int = LUT_PASSES,
    stored_only: bool = False,
    kernel_passes: int | None = None,
) -> dict[str, Any]:
    space, fit, test = _case_archs(space_name, n_test, n_fit, seed)
    t0 = time.perf_counter()
    test_stored = store.passes_stored(device, space, test, dtype)
    passes = max(passes, test_stored // 2)
    test_passes = [2 * i for i in range(passes)]
    retest_passes = [2 * i + 1 for i in range(passes)]
    fit_passes = fitting_passes(passes, test_stored, store.passes_stored(device, space, fit, dtype))
    # test and retest passes alternate in time: pass r measures every test arch once; the
    # fitting archs' passes follow the even test passes, in the windows of the test estimate.
    # (Fitted in other minutes, a correction learns the host of those minutes: on xnnpack-1t
    # mobilenetv3, fitting archs measured after all six test passes sat 6 % slower relative to
    # the LUT than the test archs did.)
    for r in range(2 * passes):
        store.measure(device, space, test, dtype, repeat=r, progress=True)
        if r % 2 == 0 and r // 2 in fit_passes:
            store.measure(device, space, fit, dtype, repeat=r // 2, progress=True)
    y_test = np.array(store.measure_passes(device, space, test, dtype, test_passes))
    y_retest = np.array(store.measure_passes(device, space, test, dtype, retest_passes))
    y_fit = np.array(store.measure_passes(device, space, fit, dtype, fit_passes, progress=True))
    t_measure = time.perf_counter() - t0
    specs = lm.reachable_specs(space, device, dtype, archs=[*fit, *test])
    lut_file = lm.lut_path(out / "luts", device, dtype)
    held = lm.LUT.load(lut_file).pass_counts() if lut_file.exists() else {}
    plan = lm.pass_plan(specs, held, lut_passes)
    t0 = time.perf_counter()
    lut = lm.build_lut(
        space,
        device,
        lut_file,
        dtype=dtype,
        archs=[*fit, *test],
        progress=True,
        passes=lut_passes,
    )
    t_lut = time.perf_counter() - t0
    predictors: dict[str, lm.LatencyModel] = {
        "macs line": lm.MacsProxy(device.name, dtype).fit(space, fit, y_fit),
        "lut sum": lm.LUTSum(lut, device),
        "lut + correction": lm.LUTCorrected(lut, device).fit(space, fit, y_fit),
        "costmodel (spec only)": lm.CostModelPredictor(device, dtype),
        "costmodel (calibrated)": lm.CostModelPredictor(device, dtype).fit(space, fit, y_fit),
    }
    kernels = _kernel_predictors(
        device,
        space,
        dtype,
        fit,
        test,
        y_fit,
        out,
        kernel_passes or lut_passes,
        stored_only,
        predictors,
    )
    predicted = {name: p.predict_many(space, test) for name, p in predictors.items()}
    return {
        "space": space_name,
        "dtype": dtype,
        "device": device.name,
        "commit": git_commit(ROOT),
        "n_test": n_test,
        "n_fit": n_fit,
        "passes_per_estimate": passes,
        "test_keys": [space.key(a) for a in test],
        "fit_keys": [space.key(a) for a in fit],
        "measured_ms": {
            "fit": y_fit.tolist(),
            "test": y_test.tolist(),
            "retest": y_retest.tolist(),
        },
        "passes": {"test": test_passes, "retest": retest_passes, "fit": fit_passes},
        "median_over_archs_ms": {
            "test": float(np.median(y_test)),
            "retest": float(np.median(y_retest)),
        },
        "predicted_ms": {k: np.asarray(v).tolist() for k, v in predicted.items()},
        "metrics": {k: metrics(np.maximum(v, 1e-9), y_test) for k, v in predicted.items()},
        "test_retest": metrics(y_retest, y_test),
        "lut": {
            "path": str(lut.path),
            "unique_layers": len(specs),
            "entries": len(lut),
            "passes": lut_passes,
            "build_s_this_run": t_lut,
            "layers_measured_this_run": sum(map(len, plan)),
        },
        "measure_s_this_run": t_measure,
        "kernels": kernels,
    }


def _kernel_predictors(
    device: lm.Device,
    space: Any,
    dtype: str,
    fit: list[dict[str, Any]],
    test: list[dict[str, Any]],
    y_fit: np.ndarray,
    out: Path,
    passes: int,
    stored_only: bool,
    predictors: dict[str, lm.LatencyModel],
) -> dict[str, Any] | None:
    """Add the kernel-table predictors where the device names its kernels (ONNX Runtime): the
    table of the kernels of the case's archs, timed in `passes` passes (`--stored-only` uses
    the table as it stands, and skips it if it lacks kernels); returns what the table cost."""
    if not lm.supports_kernels(device):
        return None
    path = lm.kernel_lut_path(out / "luts", device, dtype)
    t0 = time.perf_counter()
    if stored_only:
        if not path.exists():
            return None
        table = lm.LUT.load(path)
    else:
        before = sum(lm.LUT.load(path).pass_counts().values()) if path.exists() else 0
        table = lm.build_kernel_lut(
            space, device, path, dtype=dtype, archs=[*fit, *test], passes=passes, progress=True
        )
    t_build = time.perf_counter() - t0
    plain = lm.KernelSum(table, device)
    try:
        predictors["kernel sum"] = plain
        predictors["kernel sum, fitted line"] = lm.KernelSum(table, device).fit(space, fit, y_fit)
        predicted_keys = {k.key for a in [*fit, *test] for k in plain.kernels(space, a)}
        plain.predict_many(space, test)
    except lm.MissingKeysError as e:
        log.info(
            "%s: kernel table lacks %d kernels: kernel predictors skipped",
            space.name,
            len(e.missing),
        )
        predictors.pop("kernel sum", None)
        predictors.pop("kernel sum, fitted line", None)
        return None
    info: dict[str, Any] = {
        "path": str(path),
        "unique_kernels": len(predicted_keys),
        "entries": len(table),
        "passes": passes,
    }
    if not stored_only:
        info["build_s_this_run"] = t_build  # kernel discovery (network optimisation) included
        info["kernels_measured_this_run"] = sum(table.pass_counts().values()) - before
    return info


def cross_space(device: lm.Device, cases: list[dict[str, Any]], seed: int) -> dict[str, Any] | None:
    """Calibrate on nb201 fp32 only; predict the other fp32 spaces' test archs unchanged."""
    by = {(c["space"], c["dtype"]): c for c in cases}
    source = by.get(("nb201", "fp32"))
    if source is None:
        return None
    space, fit, test = _case_archs("nb201", source["n_test"], source["n_fit"], seed)
    archs = [*fit, *test]
    y = np.array(source["measured_ms"]["fit"] + source["measured_ms"]["test"])
    model = lm.CostModelPredictor(device, "fp32").fit(space, archs, y)
    out: dict[str, Any] = {"calibrated_on": "nb201 fp32", "n_archs": len(archs), "targets": {}}
    for (name, dtype), case in by.items():
        if dtype != "fp32" or name == "nb201":
            continue
        target, _, t_test = _case_archs(name, case["n_test"], case["n_fit"], seed)
        pred = model.predict_many(target, t_test)
        own = case["metrics"]["costmodel (calibrated)"]
        out["targets"][name] = {
            "transferred": metrics(pred, np.array(case["measured_ms"]["test"])),
            "calibrated_on_own_space": own,
        }
    out["params"] = model.params.to_dict()
    return out


def _is_stored(
    store: lm.ArchMeasurements,
    device: lm.Device,
    space_name: str,
    dtype: str,
    n_test: int,
    n_fit: int,
    out: Path,
    seed: int,
    lut_passes: int = LUT_PASSES,
) -> bool:
    space, fit, test = _case_archs(space_name, n_test, n_fit, seed)
    if store.passes_stored(device, space, test, dtype) < 2 * PASSES:
        return False
    if store.passes_stored(device, space, fit, dtype) < PASSES:
        return False
    path = lm.lut_path(out / "luts", device, dtype)
    if not path.exists():
        return False
    specs = lm.reachable_specs(space, device, dtype, archs=[*fit, *test])
    lut = lm.LUT.load(path)
    return all(lut.passes_of(s.key) >= lut_passes for s in specs)


def prepare_only(
    devices: list[str],
    plan: list[Any],
    shard: str,
    out: Path,
    seed: int,
    lut_passes: int = LUT_PASSES,
) -> None:
    """Compile shard K/N of the work into the artifact cache, timing nothing: every case's
    LUT programs (case i belongs to shard i % N), then its whole networks (arch j of the case's
    test and fit archs to shard j % N)."""
    try:
        k, n = (int(v) for v in shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise SystemExit(
            f"--prepare-only wants K/N with 0 <= K < N, e.g. 0/2; got {shard!r}"
        ) from None
    for name in devices:
        device = lm.get_device(name)
        if not isinstance(device, lm.RealDevice):
            continue
        cases = [c for c in plan if c[1] in device.dtypes]
        for i, (space_name, dtype, n_test, n_fit) in enumerate(cases):
            if i % n != k:
                continue
            space, fit, test = _case_archs(space_name, n_test, n_fit, seed)
            t0 = time.perf_counter()
            built = lm.compile_lut(
                space,
                device,
                lm.lut_path(out / "luts", device, dtype),
                dtype=dtype,
                archs=[*fit, *test],
                passes=lut_passes,
            )
            log.info(
                "%s: %s %s LUT: %d programs compiled now, %.0f s",
                name,
                space_name,
                dtype,
                built,
                time.perf_counter() - t0,
            )
        for space_name, dtype, n_test, n_fit in cases:
            space, fit, test = _case_archs(space_name, n_test, n_fit, seed)
            mine = [a for j, a in enumerate([*test, *fit]) if j % n == k]
            t0 = time.perf_counter()
            built = sum(not device.prepare_arch(space, a, dtype).cache_hit for a in mine)
            log.info(
                "%s: %s %s shard %s: %d of %d networks compiled now, %.0f s",
                name,
                space_name,
                dtype,
                shard,
                built,
                len(mine),
                time.perf_counter() - t0,
            )


def _measure_device(
    name: str,
    args: argparse.Namespace,
    plan: list[tuple[str, str, int, int]],
    store: lm.ArchMeasurements,
    results: dict[str, Any],
    previous: dict[str, Any],
) -> None:
    """Every case of `plan` on one device into `results` (the tables written after each case),
    then the cross-space transfer over its cases, this run's and the previous run's."""
    device = lm.get_device(name)
    for case in args.remeasure:
        space_name, _, dtype = case.partition(":")
        dropped = store.drop(device, _space(space_name), dtype)
        log.info("%s: dropped %d stored measurements of %s", name, dropped, case)
    cases: list[dict[str, Any]] = []
    entry: dict[str, Any] = results["devices"].setdefault(name, {"cases": cases, "pending": []})
    for space_name, dtype, n_test, n_fit in plan:
        if dtype not in device.dtypes:
            continue
        if args.stored_only and not _is_stored(
            store,
            device,
            space_name,
            dtype,
            n_test,
            n_fit,
            args.out,
            args.seed,
            args.lut_passes,
        ):
            log.info("%s: %s %s is not fully measured yet: skipped", name, space_name, dtype)
            entry["pending"].append(f"{space_name} {dtype}")
            continue
        log.info("%s: %s %s (%d test, %d fit archs)", name, space_name, dtype, n_test, n_fit)
        case = run_case(
            device,
            space_name,
            dtype,
            n_test,
            n_fit,
            args.out,
            store,
            args.seed,
            args.passes,
            args.lut_passes,
            args.stored_only,
            args.kernel_passes,
        )
        cases.append(case)
        # written after every case, so a run stopped between cases still has its tables
        carry_lut_build_times(results, previous)
        write_results(args.out, merge_results(results, previous, FULL_PLAN))
    merged_cases = merge_results(results, previous, FULL_PLAN)["devices"][name]["cases"]
    entry["cross_space"] = cross_space(device, merged_cases, args.seed)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny and nb201 fp32, 6+6 archs")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES))
    parser.add_argument("--cases", nargs="+", help="space:dtype filters, e.g. tiny:fp32 nb201:int8")
    parser.add_argument("--cache", type=Path, help="compiled-artifact cache (EDGE_NAS_CACHE)")
    parser.add_argument(
        "--remeasure",
        nargs="+",
        default=[],
        help="space:dtype cases whose stored whole-network measurements on --devices are "
        "dropped first (taken while the machine was busy, say); their LUT rows stay",
    )
    parser.add_argument(
        "--prepare-only",
        metavar="K/N",
        help="only compile (lower) shard K of N of every case's LUT programs and whole "
        "networks into the artifact cache, timing nothing: run N of these side by side first "
        "(lowering need not be quiet), then the measuring run finds everything compiled",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=PASSES,
        help=f"passes per test and retest estimate (default {PASSES}; more where the host is "
        "noisy: a case keeps every pass it has stored)",
    )
    parser.add_argument(
        "--lut-passes",
        type=int,
        default=LUT_PASSES,
        help=f"passes over every LUT layer, each layer's fastest kept (default {LUT_PASSES}); "
        "a table holding fewer is topped up",
    )
    parser.add_argument(
        "--kernel-passes",
        type=int,
        help="passes over every kernel of the ONNX Runtime kernel tables (default: "
        "--lut-passes); a table holding fewer is topped up",
    )
    parser.add_argument(
        "--stored-only",
        action="store_true",
        help="report only the cases whose whole-network measurements and LUT are all stored "
        "under --out (tables of a partly measured plan, without compiling or timing anything)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-archs", type=int, help="cap test and fitting archs per case (smoke runs)"
    )
    args = parser.parse_args()
    if args.passes < 1 or args.lut_passes < 1 or (args.kernel_passes or 1) < 1:
        parser.error(
            "--passes, --lut-passes and --kernel-passes must be >= 1; got "
            f"{args.passes}, {args.lut_passes}, {args.kernel_passes}"
        )
    return args


def main() -> None:
    args = _parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cache is not None:
        os.environ["EDGE_NAS_CACHE"] = str(args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.cases:
        plan = [p for p in plan if f"{p[0]}:{p[1]}" in set(args.cases)]
    if args.max_archs:
        plan = [(s, d, min(t, args.max_archs), min(f, args.max_archs)) for s, d, t, f in plan]
    if args.prepare_only:
        prepare_only(args.devices, plan, args.prepare_only, args.out, args.seed, args.lut_passes)
        return
    store = lm.ArchMeasurements(args.out / "measurements.csv")
    results_file = args.out / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    results: dict[str, Any] = {
        "benchmark": "latency_runtime",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "quick": args.quick,
        "max_archs": args.max_archs,
        "seed": args.seed,
        "plan": plan,
        "devices": {},
    }
    t_start = time.perf_counter()
    for name in args.devices:
        _measure_device(name, args, plan, store, results, previous)
    results["total_s_this_run"] = time.perf_counter() - t_start
    merged = merge_results(results, previous, FULL_PLAN)
    merged["median_tau_over_cases"] = median_taus(merged)
    write_results(args.out, merged)
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()

"""benchmarks/latency_runtime.py keeps the cases a partial run did not touch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks._latency_runtime_report import more

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "latency_runtime_bench", ROOT / "benchmarks" / "latency_runtime.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _case(space: str, dtype: str, tau: float, **extra: Any) -> dict[str, Any]:
    return {"space": space, "dtype": dtype, "metrics": {"lut sum": {"kendall_tau": tau}}, **extra}


def _results(commit: str, devices: dict[str, list[dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    plan = [[c["space"], c["dtype"], 50, 30] for cases in devices.values() for c in cases]
    return {
        "commit": commit,
        "quick": False,
        "max_archs": None,
        "seed": 0,
        "plan": plan,
        "devices": {d: {"cases": cases, "pending": []} for d, cases in devices.items()},
        **extra,
    }


def test_a_partial_run_updates_its_cases_and_keeps_the_rest() -> None:
    bench = _bench()
    previous = _results(
        "old",
        {
            "ort-cpu-1t": [_case("tiny", "fp32", 0.9), _case("nb201", "fp32", 0.8)],
            "xnnpack-1t": [_case("tiny", "fp32", 0.7)],
        },
    )
    run = _results("new", {"ort-cpu-1t": [_case("nb201", "fp32", 0.85, commit="new")]})
    merged = bench.merge_results(run, previous, bench.FULL_PLAN)
    assert merged["commit"] == "new"
    ort = merged["devices"]["ort-cpu-1t"]["cases"]
    assert [(c["space"], c["metrics"]["lut sum"]["kendall_tau"]) for c in ort] == [
        ("tiny", 0.9),
        ("nb201", 0.85),
    ]
    assert ort[0]["commit"] == "old" and ort[1]["commit"] == "new"
    assert merged["devices"]["xnnpack-1t"]["cases"][0]["metrics"]["lut sum"]["kendall_tau"] == 0.7
    assert [p[:2] for p in merged["plan"]] == [["tiny", "fp32"], ["nb201", "fp32"]]
    assert "(run at `old`)" in more(ort[0], merged["commit"])
    # a quick run (or other seed, or capped archs) never mixes with the full tables
    quick = {**run, "quick": True}
    assert bench.merge_results(quick, previous, bench.FULL_PLAN) is quick


def test_a_stored_kernel_table_keeps_the_build_figures_of_the_run_that_built_it() -> None:
    bench = _bench()
    built = {"unique_kernels": 57, "passes": 3, "build_s_this_run": 164.0}
    built["kernels_measured_this_run"] = 171
    lut = {"layers_measured_this_run": 0, "build_s_this_run": 0.1}
    previous = _results(
        "old", {"ort-cpu-1t": [_case("nb201", "fp32", 0.9, kernels=built, lut=lut)]}
    )
    stored = {"unique_kernels": 57, "passes": 3}  # --stored-only: read, not built
    run = _results("new", {"ort-cpu-1t": [_case("nb201", "fp32", 0.9, kernels=stored, lut=lut)]})
    bench.carry_lut_build_times(run, previous)
    kernels = run["devices"]["ort-cpu-1t"]["cases"][0]["kernels"]
    assert kernels["build_s_this_run"] == 164.0 and kernels["kernels_measured_this_run"] == 171


def test_a_case_names_its_passes_where_they_differ_from_the_default() -> None:
    default = {"passes_per_estimate": 3, "passes": {"fit": [0, 1, 2]}}
    assert more(default) == ""
    five = {"passes_per_estimate": 5, "passes": {"fit": [0, 1, 2, 3, 4]}}
    assert more(five) == " (5+5 passes, fit 5)"
    # stored before fitting passes followed the test passes: its 3 fitting passes are said
    assert more({"passes_per_estimate": 5, "passes": {"fit": [0, 1, 2]}}) == (
        " (5+5 passes, fit 3)"
    )


def test_fitting_passes_are_taken_only_beside_their_test_passes() -> None:
    bench = _bench()
    assert bench.fitting_passes(3, 0, 0) == [0, 1, 2]  # a new case: as many as the test
    assert bench.fitting_passes(5, 0, 0) == [0, 1, 2, 3, 4]
    # stored under the old rule (5 + 5 test passes, 3 fitting): kept as it is
    assert bench.fitting_passes(5, 10, 3) == [0, 1, 2]
    # asked for more passes later: the new test passes bring their fitting passes
    assert bench.fitting_passes(7, 10, 3) == [0, 1, 2, 5, 6]
    assert bench.fitting_passes(5, 10, 5) == [0, 1, 2, 3, 4]

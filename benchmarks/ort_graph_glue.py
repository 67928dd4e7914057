"""What a LUT of lone layers misses on ONNX Runtime: the glue kernels its optimiser inserts.

ONNX Runtime rewrites a whole network before running it: NCHWc layout reorders around the
convolutions (fp32), transposes to channels-last and quantize / dequantize nodes between int8
islands (int8). Their number depends on which ops neighbour which, so no table of lone layers
holds them. This benchmark takes the whole-network measurements and LUTs that
`benchmarks/latency_runtime.py` stored (it measures nothing), asks ONNX Runtime for the
optimised graph of every arch (`OrtCPUDevice.optimized_graph_ops`), and compares on the same
fitting / test split:

- `lut + correction`: the project's `LUTCorrected`, fitted on the fitting archs;
- `+ glue counts`: that prediction plus a least-squares term per glue node type (the types
  fixed in advance, `GLUE`: nodes no lone layer produces), fitted on the same fitting archs.

    python benchmarks/ort_graph_glue.py --out runs/bench/ort_graph_glue \
        [--measurements benchmarks/results/latency_runtime] [--cache CACHE]

It is an analysis, not a predictor the search can use: every arch needs an ONNX export (or a
cache hit) and an ONNX Runtime session, about a second each.
"""

from __future__ import annotations

import argparse
import json
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
from latency_models.commands import disjoint_archs
from latency_models.runtimes.onnxrt import OrtCPUDevice
from latency_models.validate import metrics
from nas.config import git_commit

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "ort-cpu-1t"
# (space, dtype, test archs, fitting archs): latency_runtime's plan for these spaces
CASES = [("nb201", "fp32", 50, 30), ("nb201", "int8", 50, 30), ("tiny", "fp32", 50, 30)]
GLUE = {
    "fp32": ("ReorderInput", "ReorderOutput"),
    "int8": ("Transpose", "QuantizeLinear", "DequantizeLinear"),
}
"""Node types of the optimised graph that no lone layer produces (chosen before looking at
any result)."""


def _stored(
    store: lm.ArchMeasurements,
    device: lm.Device,
    space: Any,
    archs: list[dict[str, Any]],
    dtype: str,
    passes: list[int],
) -> np.ndarray:
    for r in passes:
        missing = [a for a in archs if store.get(device, space, a, dtype, r) is None]
        if missing:
            raise SystemExit(
                f"{len(missing)} archs of {space.name} {dtype} lack pass {r} in the store: run "
                "benchmarks/latency_runtime.py first (this benchmark measures nothing)"
            )
    return np.array(store.measure_passes(device, space, archs, dtype, passes))


def run_case(
    device: lm.RealDevice,
    store: lm.ArchMeasurements,
    luts: Path,
    space_name: str,
    dtype: str,
    n_test: int,
    n_fit: int,
    seed: int,
) -> dict[str, Any]:
    space = search_spaces.get_space(space_name)
    fit, test = disjoint_archs(space, n_fit, n_test, seed=seed)
    n_passes = max(3, store.passes_stored(device, space, test, dtype) // 2)
    y_test = _stored(store, device, space, test, dtype, [2 * i for i in range(n_passes)])
    y_fit = _stored(store, device, space, fit, dtype, [0, 1, 2])
    lut = lm.LUT.load(lm.lut_path(luts, device, dtype))
    corrected = lm.LUTCorrected(lut, device).fit(space, fit, y_fit)
    runtime = device.runtime_device
    assert isinstance(runtime, OrtCPUDevice)
    t0 = time.perf_counter()
    ops = {
        space.key(a): runtime.optimized_graph_ops(device.prepare_arch(space, a, dtype))
        for a in [*fit, *test]
    }
    graph_s = time.perf_counter() - t0
    glue = GLUE[dtype]

    def design(archs: list[dict[str, Any]]) -> np.ndarray:
        base = corrected.predict_many(space, archs)
        counts = [[ops[space.key(a)].get(g, 0) for a in archs] for g in glue]
        return np.column_stack([base, np.ones(len(archs)), *counts])

    x_fit = design(fit)
    # relative errors, as every predictor of the project is fitted
    coef, *_ = np.linalg.lstsq(x_fit / y_fit[:, None], np.ones(len(y_fit)), rcond=None)
    predicted = {
        "lut + correction": corrected.predict_many(space, test),
        "+ glue counts": design(test) @ coef,
    }
    return {
        "space": space_name,
        "dtype": dtype,
        "n_test": n_test,
        "n_fit": n_fit,
        "glue": list(glue),
        "glue_coef_ms": dict(zip(glue, coef[2:].tolist(), strict=True)),
        "glue_counts_range": {
            g: [min(o.get(g, 0) for o in ops.values()), max(o.get(g, 0) for o in ops.values())]
            for g in glue
        },
        "measured_ms": {"test": y_test.tolist(), "fit": y_fit.tolist()},
        "predicted_ms": {k: v.tolist() for k, v in predicted.items()},
        "metrics": {k: metrics(np.maximum(v, 1e-9), y_test) for k, v in predicted.items()},
        "graph_s_per_arch": graph_s / len(ops),
    }


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _table(results: dict[str, Any]) -> str:
    lines = [
        "# ONNX Runtime's glue kernels against a LUT of lone layers",
        "",
        f"commit `{results['commit'][:10]}`; measurements from `{results['measurements']}`",
        "",
        "| case | glue node types (count range over archs) | LUT + correction tau / w10 | + glue counts tau / w10 | s per arch |",
        "|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        glue = ", ".join(f"{g} ({lo}-{hi})" for g, (lo, hi) in c["glue_counts_range"].items())
        a, b = c["metrics"]["lut + correction"], c["metrics"]["+ glue counts"]
        lines.append(
            f"| {c['space']} {c['dtype']} | {glue} | {a['kendall_tau']:.3f} / "
            f"{a['within_10_pct']:.0f} | {b['kendall_tau']:.3f} / {b['within_10_pct']:.0f} | "
            f"{c['graph_s_per_arch']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--measurements",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "latency_runtime",
        help="latency_runtime's --out folder (measurements.csv, luts/)",
    )
    parser.add_argument("--cache", type=Path, help="compiled-artifact cache (EDGE_NAS_CACHE)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cache is not None:
        os.environ["EDGE_NAS_CACHE"] = str(args.cache)
    store_file = args.measurements / "measurements.csv"
    if not store_file.is_file():
        raise SystemExit(f"no {store_file}: run benchmarks/latency_runtime.py first")
    store = lm.ArchMeasurements(store_file)
    device = lm.get_device(DEVICE)
    assert isinstance(device, lm.RealDevice)
    cases = [
        run_case(device, store, args.measurements / "luts", *case, seed=args.seed) for case in CASES
    ]
    results = {
        "benchmark": "ort_graph_glue",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "measurements": _shown(args.measurements),
        "device": DEVICE,
        "seed": args.seed,
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(_table(results))
    print(_table(results))


if __name__ == "__main__":
    main()

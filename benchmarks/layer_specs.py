"""What pricing an arch costs: layer specs, MACs, params and peak memory per arch, per space.

For each registered space: the first N fresh archs (cold: blocks traced on first sight) and the
next N fresh archs (warm: blocks already seen are reused), and a repeat of archs already priced
(cached per arch key). Baseline measured side by side: tracing the whole built module per arch
(what any space gets without `block_specs`).

    python benchmarks/layer_specs.py --out runs/bench/layer_specs [--archs 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces
from nas.app.config import git_commit
from nas.core.layers import trace_layer_specs

ROOT = Path(__file__).resolve().parents[1]


def _time_each(fn, items) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--archs", type=int, default=200)
    parser.add_argument("--baseline-archs", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, object] = {
        "benchmark": "layer_specs",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "spaces": {},
    }
    for name in search_spaces.SPACES.list():
        space = search_spaces.get_space(name)
        space.layer_specs(space.sample(10_000))  # process warm-up (meta kernels, imports)
        n = args.archs
        cold = [space.sample(i) for i in range(n)]
        warm = [space.sample(n + i) for i in range(n)]
        cold_ms = _time_each(space.layer_specs, cold)
        warm_ms = _time_each(space.layer_specs, warm)
        cached_ms = _time_each(space.layer_specs, cold)
        base = [space.sample(5 * n + i) for i in range(args.baseline_archs)]
        base_ms = _time_each(
            lambda a, space=space: trace_layer_specs(lambda: space.build(a), space.input_shape(a)),
            base,
        )
        mean_cold = statistics.fmean(cold_ms)
        med = {
            k: statistics.median(v)
            for k, v in (
                ("cold", cold_ms),
                ("warm", warm_ms),
                ("cached", cached_ms),
                ("whole_trace", base_ms),
            )
        }
        results["spaces"][name] = {  # type: ignore[index]
            "per_arch_ms": {
                "cold": cold_ms,
                "warm": warm_ms,
                "cached": cached_ms,
                "whole_trace_baseline": base_ms,
            },
            "median_ms": med,
            "mean_cold_ms": mean_cold,
            "speedup_warm_vs_whole_trace": med["whole_trace"] / med["warm"],
            "n_specs_median": statistics.median(len(space.layer_specs(a)) for a in cold),
        }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| space | specs/arch | cold ms (mean) | cold ms | warm ms | cached ms |"
        " whole-module trace ms | warm speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["spaces"].items():  # type: ignore[attr-defined]
        m = r["median_ms"]
        lines.append(
            f"| {name} | {r['n_specs_median']:.0f} | {r['mean_cold_ms']:.2f} | {m['cold']:.2f} | "
            f"{m['warm']:.2f} | "
            f"{m['cached']:.3f} | {m['whole_trace']:.1f} | {r['speedup_warm_vs_whole_trace']:.0f}x |"
        )
    table = "\n".join(lines)
    (args.out / "table.md").write_text(
        f"Layer-spec cost per arch (medians, {args.archs} archs each; commit "
        f"{results['commit'][:10]})\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()

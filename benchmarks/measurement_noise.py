"""Which summary of timed runs repeats on this machine: median against minimum and low quantiles.

For each (space, device) pair, N archs are compiled once, then timed in P interleaved passes of
``--pass-s`` seconds each (pass after pass, every arch once per pass). Each statistic is computed
twice per arch, once from the samples of the even passes and once from the odd ones, and the two
estimates are compared over the archs: Kendall tau, the share within +-10 % and the mean relative
difference. The median is the baseline; the project's headline (`latency_models.measure`) is
the minimum. Also reported: one pass alone (the first), as a single measurement would see it,
and a trace of one network (per-window median and minimum) showing what the neighbours do.

    python benchmarks/measurement_noise.py --out runs/bench/measurement_noise [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latency_models as lm
import search_spaces
from nas.app.config import git_commit
from nas.app.latency_commands import disjoint_archs

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("tiny", "ort-cpu-1t"), ("nb201", "ort-cpu-1t"), ("tiny", "xnnpack-1t")]
WARMUP_RUNS = 10


def _timed(prepared: Any, runtime: Any, seconds: float) -> np.ndarray:
    """Samples (ms) of ``prepared()`` for ``seconds`` after a short warm-up, threads fixed."""
    with runtime._fixed_threads():
        for _ in range(WARMUP_RUNS):
            prepared()
        out: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            prepared()
            out.append((time.perf_counter_ns() - t0) / 1e6)
    return np.asarray(out)


STATISTICS = {
    "median (baseline)": lambda xs: float(np.median(np.concatenate(xs))),
    "p10": lambda xs: float(np.percentile(np.concatenate(xs), 10)),
    "p1": lambda xs: float(np.percentile(np.concatenate(xs), 1)),
    "minimum (headline)": lambda xs: float(np.concatenate(xs).min()),
    "first pass, median": lambda xs: float(np.median(xs[0])),
    "first pass, minimum": lambda xs: float(xs[0].min()),
}


def run_pair(space_name: str, device_name: str, n: int, passes: int, pass_s: float) -> dict:
    space = search_spaces.get_space(space_name)
    runtime = lm.get_device(device_name).engine  # type: ignore[attr-defined]
    _, archs = disjoint_archs(space, 1, n, seed=0)
    prepared = []
    for a in archs:
        a = space.validate(a)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = space.build(a)
        prepared.append(runtime.prepare(module, (1, *space.input_shape(a)), "fp32"))
    # samples[p][j]: pass p, arch j
    samples = [[_timed(p, runtime, pass_s) for p in prepared] for _ in range(passes)]
    even, odd = list(range(0, passes, 2)), list(range(1, passes, 2))
    out: dict[str, Any] = {"space": space_name, "device": device_name, "archs": n}
    stats: dict[str, Any] = {}
    for name, fn in STATISTICS.items():
        a = np.array([fn([samples[p][j] for p in even]) for j in range(n)])
        b = np.array([fn([samples[p][j] for p in odd]) for j in range(n)])
        rel = np.abs(b / a - 1)
        stats[name] = {
            "kendall_tau": float(kendalltau(a, b)[0]),
            "within_10_pct": float(100 * np.mean(rel < 0.1)),
            "mean_rel_diff": float(rel.mean()),
            "even_ms": a.tolist(),
            "odd_ms": b.tolist(),
        }
    out["statistics"] = stats
    out["range_ms"] = [
        float(min(s["even_ms"][0] for s in stats.values())),
        float(max(max(s["even_ms"]) for s in stats.values())),
    ]
    return out


def trace(space_name: str, device_name: str, seconds: float, window_s: float) -> dict:
    """One network timed without a break: per-window median and minimum (us)."""
    space = search_spaces.get_space(space_name)
    runtime = lm.get_device(device_name).engine  # type: ignore[attr-defined]
    a = space.validate(disjoint_archs(space, 1, 1, seed=0)[1][0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = space.build(a)
    prepared = runtime.prepare(module, (1, *space.input_shape(a)), "fp32")
    with runtime._fixed_threads():
        for _ in range(100):
            prepared()
        times, stamps = [], []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            prepared()
            t1 = time.perf_counter_ns()
            times.append((t1 - t0) / 1e3)
            stamps.append(t1)
    t = np.asarray(times)
    w = ((np.asarray(stamps) - stamps[0]) / 1e9 // window_s).astype(int)
    windows = range(int(w.max()) + 1)
    return {
        "space": space_name,
        "device": device_name,
        "window_s": window_s,
        "window_median_us": [float(np.median(t[w == i])) for i in windows],
        "window_min_us": [float(t[w == i].min()) for i in windows],
    }


def _table(results: dict[str, Any]) -> str:
    lines = [
        "# Measurement noise: which statistic repeats",
        "",
        f"commit `{results['commit'][:10]}`; {results['passes']} interleaved passes of "
        f"{results['pass_s']} s per arch; even passes against odd passes",
        "",
        "| space | device | archs | range ms | statistic | tau | within 10 % | mean rel diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["pairs"]:
        first = True
        for name, s in r["statistics"].items():
            lead = (
                f"| {r['space']} | {r['device']} | {r['archs']} | "
                f"{r['range_ms'][0]:.3f}-{r['range_ms'][1]:.3f} "
                if first
                else "| | | | "
            )
            lines.append(
                f"{lead}| {name} | {s['kendall_tau']:.3f} | {s['within_10_pct']:.0f} | "
                f"{s['mean_rel_diff']:.3f} |"
            )
            first = False
    tr = results["trace"]
    lines += [
        "",
        f"One {tr['space']} network on {tr['device']}, windows of {tr['window_s']} s:",
        "",
        "- median us: " + " ".join(f"{v:.0f}" for v in tr["window_median_us"]),
        "- minimum us: " + " ".join(f"{v:.0f}" for v in tr["window_min_us"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="6 archs, 2 passes, tiny on ORT")
    parser.add_argument("--archs", type=int, default=24)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--pass-s", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = PAIRS[:1] if args.quick else PAIRS
    n, passes = (6, 2) if args.quick else (args.archs, args.passes)
    if passes < 2 or passes % 2:
        parser.error(f"--passes must be an even number >= 2; got {passes}")
    results: dict[str, Any] = {
        "benchmark": "measurement_noise",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "passes": passes,
        "pass_s": args.pass_s,
        "pairs": [run_pair(s, d, n, passes, args.pass_s) for s, d in pairs],
        "trace": trace("tiny", "ort-cpu-1t", 2.0 if args.quick else 8.0, 0.25),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(_table(results))
    print(_table(results))


if __name__ == "__main__":
    main()

"""How close each search strategy gets to the true accuracy/latency front of NAS-Bench-201.

Two (accuracy, device) pairs: (cifar10_acc, pixel3_ms) and (cifar100_acc, raspi4_ms). Score:
HV(found) / HV(true), reference point = (median accuracy, 95th-percentile latency) over all
15,625 rows, HV(true) over all rows. Strategies side by side in one run: random search, Optuna
NSGA-II, TPE and GP with default settings, and ours (`frontier`), 10 seeds each, scored after
50, 100, 200 and 300 paid evaluations of one run. Rules (see `nas.search.tabular`): one
evaluation per distinct arch paid for (isomorphic archs share a canonical key and are not paid
twice, but count as found only once paid); latency look-ups are free; a strategy sees the
target device's latency column only and the accuracies it paid for (`--feature-columns` adds a
labelled row where `frontier` also sees other devices' latencies; `--ablations` adds labelled
`frontier` variants); the scoring reference point is never shown to a strategy. `frontier`
picks its initial design with a zero-cost proxy (synflow on the untrained, narrow
`proxy_build` network: free, no accuracy), as `nas bench tabular` does. Optuna's
samplers may re-propose paid archs (free), so runs stop at `--max-trials` (default 5 x 300);
`paid` says how many evaluations they reached. `nas bench tabular` gives the same figures for
the same settings. results.json's `targets` holds issue 24's contract.

Also: the Kendall tau of accuracy predictors on NB201 with 100 and 300 training archs.

    python benchmarks/search_nb201.py --out runs/bench/search_nb201 [--seeds 10] [--quick]
    python benchmarks/search_nb201.py --csv my_table.csv --arch-column arch_str \\
        --pair top1:latency_ms --out runs/bench/mine        # any table of a space's archs
"""

from __future__ import annotations

import os

# small dense algebra runs fastest on one thread per worker process; set before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from nas import predictors as P
from nas.app.config import git_commit
from nas.core.space import SearchSpace
from nas.search.tabular import STRATEGIES, TabularBenchmark, bench_tabular, summarize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "benchmarks" / "nb201" / "nb201.csv"
PAIRS = (("cifar10_acc", "pixel3_ms"), ("cifar100_acc", "raspi4_ms"))
BUDGETS = (50, 100, 200, 300)
log = logging.getLogger("search_nb201")


def predictor_ranking(
    table: TabularBenchmark,
    accuracy_column: str,
    n_train: tuple[int, ...] = (100, 300),
    seeds: tuple[int, ...] = (0, 1, 2),
    n_test: int = 3000,
) -> pd.DataFrame:
    """Kendall tau / Spearman / RMSE of each predictor on held-out archs, with two feature
    sets: the one-hot code alone, and one-hot plus every (free) latency column."""
    space = table.space
    onehot = P.ArchFeatures(space)
    x_code = onehot.transform(table.archs)
    lat = table.frame[table.latency_columns].to_numpy(float)
    costs = {c: (lambda archs: None) for c in table.latency_columns}
    with_lat = P.ArchFeatures(space, costs=costs).fit(table.archs, lat)  # type: ignore[arg-type]
    x_lat = with_lat.transform(table.archs, lat)
    y = table.frame[accuracy_column].to_numpy(float)
    factories: dict[str, Any] = {
        "ridge": lambda: P.RidgePredictor(alpha=1.0),
        "gbt": lambda: P.GBTPredictor(seed=0),
        "gp": lambda: P.GPPredictor(n_restarts=1, seed=0),
        "mlp (OFA 3x400)": lambda: P.MLPPredictor(epochs=100, seed=0),
        "ensemble (5x 2x128)": lambda: P.EnsemblePredictor(epochs=100, seed=0),
    }
    frames = []
    for name, x, groups in (
        ("one-hot", x_code, onehot.groups),
        ("one-hot + latency", x_lat, with_lat.groups),
    ):
        facts = dict(factories)
        facts["gp"] = lambda g=groups: P.GPPredictor(groups=g, n_restarts=1, seed=0)
        f = P.compare_predictors(x, y, facts, n_train=n_train, n_test=n_test, seeds=seeds)
        f.insert(0, "features", name)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def run_benchmark(
    csv: Path,
    space: SearchSpace,
    arch_column: str,
    pairs: tuple[tuple[str, str], ...],
    feature_columns: list[str] | None,
    seeds: list[int],
    budgets: tuple[int, ...],
    strategies: tuple[str, ...],
    n_jobs: int,
    predictor_seeds: tuple[int, ...],
    max_trials: int | None = None,
    variants: dict[str, tuple[str, dict[str, Any]]] | None = None,
    seeds_of: dict[str, int] | None = None,
    trials_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The whole benchmark on any table; returns the results dictionary.

    Every strategy sees the target device's latency only. `feature_columns` (other devices'
    latency columns) add one labelled row: `frontier` with them as extra features. `variants`
    add labelled rows too (label -> (strategy, sampler options)), e.g. the ablations.
    `seeds_of` runs a row on its first N seeds only (label -> N; a slow baseline);
    `trials_of` caps a row's trials per run (label -> N, duplicates included; its `paid`
    column says how many evaluations it reached).
    """
    frame = pd.read_csv(csv)
    extra = list(feature_columns or [])
    lat_cols = list(dict.fromkeys([*(lat for _, lat in pairs), *extra]))
    acc_cols = list(dict.fromkeys(a for a, _ in pairs))
    table = TabularBenchmark(space, frame, arch_column, acc_cols, lat_cols, source=str(csv))
    results: dict[str, Any] = {
        "benchmark": "search_nb201",
        "commit": git_commit(ROOT, mark_dirty=True),
        "csv": str(csv),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus visible, {n_jobs} jobs",
        "loadavg_start": list(os.getloadavg()),
        "budgets": list(budgets),
        "seeds": seeds,
        "max_trials": max_trials or 5 * max(budgets),
        "seeds_of": dict(seeds_of or {}),
        "trials_of": dict(trials_of or {}),
        "features": "target device's latency only (plus labelled extra rows)",
        "feature_columns": extra,
        "strategies": list(strategies),
        "pairs": {},
    }
    rows: dict[str, tuple[str, dict[str, Any], list[str]]] = {s: (s, {}, []) for s in strategies}
    for label, (strategy, options) in (variants or {}).items():
        rows[label] = (strategy, options, [])
    if extra:
        tail = extra[0] if len(extra) == 1 else "other devices' latency"
        rows[f"frontier + {tail}"] = ("frontier", {}, extra)
    results["rows"] = list(rows)
    for acc, lat in pairs:
        key = f"{acc}/{lat}"
        results["pairs"][key] = _run_pair(
            table, acc, lat, rows, seeds, budgets, n_jobs, max_trials, seeds_of or {},
            trials_of or {},
        )  # fmt: skip
    results["targets"] = targets(results)
    if predictor_seeds:
        results["predictors"] = _predictors(table, pairs[0][0], predictor_seeds)
    return results


def _run_pair(
    table: TabularBenchmark,
    acc: str,
    lat: str,
    rows: dict[str, tuple[str, dict[str, Any], list[str]]],
    seeds: list[int],
    budgets: tuple[int, ...],
    n_jobs: int,
    max_trials: int | None,
    seeds_of: dict[str, int],
    trials_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Every row's runs on one (accuracy, latency) pair, their summary and the true front."""
    t0 = time.perf_counter()
    parts = []
    for label, (strategy, options, cols) in rows.items():
        mine = seeds[: seeds_of.get(label, len(seeds))]
        part = bench_tabular(
            table, acc, lat, [strategy], budgets, mine, n_jobs=n_jobs,
            sampler_options={strategy: options},
            max_trials=(trials_of or {}).get(label, max_trials),
            feature_columns=[c for c in cols if c != lat],
        )  # fmt: skip
        part["strategy"] = label
        parts.append(part)
    runs = pd.concat(parts, ignore_index=True)
    summary = summarize(runs)
    paid = runs.groupby(["strategy", "budget"])["n_paid"].mean().rename("mean_paid")
    summary = summary.merge(paid.reset_index(), on=["strategy", "budget"])
    log.info("%s/%s done in %.0f s\n%s", acc, lat, time.perf_counter() - t0, summary.to_string())
    return {
        "reference": parts[0].attrs["reference"],
        "hv_true": parts[0].attrs["hv_true"],
        "true_front_size": len(table.true_front(acc, lat)),
        "runs": runs.to_dict(orient="records"),
        "summary": summary.to_dict(orient="records"),
        "elapsed_s": time.perf_counter() - t0,
    }


def _predictors(table: TabularBenchmark, accuracy: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """How the accuracy predictors rank archs of the table (Kendall tau, Spearman, RMSE)."""
    t0 = time.perf_counter()
    pr = predictor_ranking(table, accuracy, seeds=seeds)
    agg = (
        pr.groupby(["features", "predictor", "n_train"])[
            ["kendall_tau", "spearman", "rmse", "fit_s"]
        ]
        .mean()
        .reset_index()
    )
    return {
        "accuracy_column": accuracy,
        "runs": pr.to_dict(orient="records"),
        "summary": agg.to_dict(orient="records"),
        "elapsed_s": time.perf_counter() - t0,
    }


def targets(results: dict[str, Any], strategy: str = "frontier") -> dict[str, Any]:
    """The issue's contract: the lower of the pairs' mean HV ratios at 300 and 100 paid
    evaluations (target-only features), the worst seed at 300, the slowest strategy step."""
    means: dict[int, list[float]] = {}
    worst: list[float] = []
    steps: list[float] = []
    cpu_steps: list[float] = []
    setups: list[float] = []
    for pair in results["pairs"].values():
        runs = pd.DataFrame(pair["runs"])
        mine = runs[runs["strategy"] == strategy]
        agg = mine.groupby("budget")["hv_ratio"].mean()
        for b, m in zip(agg.index.astype(int).tolist(), agg.tolist(), strict=True):
            means.setdefault(b, []).append(float(m))
        top = mine[mine["budget"] == mine["budget"].max()]
        worst += top["hv_ratio"].tolist()
        if "step_s_max" in mine:
            steps += mine["step_s_max"].dropna().tolist()
        if "step_cpu_s_max" in mine:
            cpu_steps += mine["step_cpu_s_max"].dropna().tolist()
            setups += mine["setup_s"].dropna().tolist()
    return {
        "strategy": strategy,
        "hv300_min_pair": min(means[300]) if 300 in means else None,
        "hv100_min_pair": min(means[100]) if 100 in means else None,
        "hv300_worst_seed": min(worst) if worst else None,
        "step_s_max": max(steps) if steps else None,
        "step_cpu_s_max": max(cpu_steps) if cpu_steps else None,
        "setup_s_max": max(setups) if setups else None,
        "commit": results["commit"],
    }


def table_md(results: dict[str, Any]) -> str:
    budgets = results["budgets"]
    lines = [
        "# Search on NAS-Bench-201: HV(found) / HV(true)",
        "",
        f"Commit `{results['commit']}`, seeds {results['seeds']}, {results['machine']}, "
        f"{results.get('elapsed_s', 0):.0f} s wall, {results.get('cpu_s', 0):.0f} s CPU in all; "
        f"load average {results['loadavg_start'][0]:.1f} at the start, "
        f"{results.get('loadavg_end', [0.0])[0]:.1f} at the end (a shared machine: times are "
        "under that load).",
        "Every row sees the target device's latency only, unless its label says otherwise. Mean "
        "(worst) over seeds after each number of paid accuracy evaluations; `paid` = mean "
        "evaluations a strategy reached at the last budget (each run stops at "
        f"{results['max_trials']} trials{_caps(results)}); `seeds` = seeds run for that row.",
        "",
    ]
    for key, pair in results["pairs"].items():
        ref = pair["reference"]
        lines += [
            f"## {key}",
            "",
            f"Reference: accuracy {ref['accuracy']:.3f}, latency {ref['latency_ms']:.3f} ms; "
            f"true front {pair['true_front_size']} archs.",
            "",
            "| strategy | " + " | ".join(f"{b} evals" for b in budgets) + " | paid | seeds |",
            "|---|" + "---|" * (len(budgets) + 2),
        ]
        summary = pd.DataFrame(pair["summary"])
        for strategy in results.get("rows", results["strategies"]):
            s = summary[summary["strategy"] == strategy].set_index("budget")
            cells = [f"{s.at[b, 'mean']:.3f} ({s.at[b, 'worst']:.3f})" for b in budgets]
            last = budgets[-1]
            lines.append(
                f"| {strategy} | "
                + " | ".join(cells)
                + f" | {s.at[last, 'mean_paid']:.0f} | {s.at[last, 'n_seeds']} |"
            )
        lines.append("")
    t = results.get("targets")
    if t:
        lines += ["## Targets (issue 24; `frontier`, target-only features)", ""]
        lines += [
            f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in t.items()
        ]
        lines.append("")
    if "predictors" in results:
        pr = pd.DataFrame(results["predictors"]["summary"])
        lines += [
            f"## Predictors on {results['predictors']['accuracy_column']} (held-out archs)",
            "",
            "| features | predictor | n_train | Kendall tau | Spearman | RMSE | fit (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in pr.iterrows():
            lines.append(
                f"| {r['features']} | {r['predictor']} | {r['n_train']} | {r['kendall_tau']:.3f} "
                f"| {r['spearman']:.3f} | {r['rmse']:.2f} | {r['fit_s']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _caps(results: dict[str, Any]) -> str:
    caps = results.get("trials_of") or {}
    return "".join(f", {row} at {n}" for row, n in caps.items())


def _space(name: str) -> SearchSpace:
    import search_spaces

    return search_spaces.get_space(name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="writes results.json, table.md")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--space", default="nb201", help="registered space of the table's archs")
    parser.add_argument("--arch-column", default="arch_str")
    parser.add_argument(
        "--pair",
        action="append",
        help="ACCURACY_COLUMN:LATENCY_COLUMN (repeatable; default: the two NB201 pairs)",
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--quick", action="store_true", help="3 seeds, budgets 50/100, 1 predictor seed"
    )
    parser.add_argument("--no-predictors", action="store_true")
    parser.add_argument(
        "--budgets", help="comma list of evaluation counts (default 50,100,200,300)"
    )
    parser.add_argument(
        "--seeds-of",
        action="append",
        default=[],
        metavar="ROW=N",
        help="run a row (strategy or label) on its first N seeds only, e.g. gp=2 (repeatable)",
    )
    parser.add_argument(
        "--ablations", action="store_true", help="add the labelled frontier variants' rows"
    )
    parser.add_argument(
        "--proxy-cache",
        type=Path,
        help="with --ablations: a ZeroCostProxy cache of every arch's synflow (proxy_build "
        "network, seed 0; filled when missing), for the row with synflow as a feature",
    )
    parser.add_argument(
        "--max-trials", type=int, help="cap on each run's trials (default 5 x the largest budget)"
    )
    parser.add_argument(
        "--max-trials-of",
        action="append",
        default=[],
        metavar="ROW=N",
        help="cap one row's trials per run, e.g. gp=400 (Optuna's GP sampler costs seconds a "
        "trial at a few hundred points; `paid` reports what it reached; repeatable)",
    )
    parser.add_argument(
        "--feature-columns",
        help="other devices' latency columns given to `frontier` as extra features, reported as "
        "a separate row (comma list, or 'all': every other *_ms column); default: none",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("nas").setLevel(logging.WARNING)
    logging.getLogger("nas.search.tabular").setLevel(logging.INFO)  # a line per seed
    pairs = (
        tuple(tuple(p.split(":", 1)) for p in args.pair)  # type: ignore[misc]
        if args.pair
        else PAIRS
    )
    n_seeds = 3 if args.quick else args.seeds
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else BUDGETS
    budgets = (50, 100) if args.quick else budgets
    pred_seeds: tuple[int, ...] = () if args.no_predictors else ((0,) if args.quick else (0, 1, 2))
    t0 = time.perf_counter()
    results = run_benchmark(
        args.csv,
        _space(args.space),
        args.arch_column,
        pairs,  # type: ignore[arg-type]
        _feature_columns(args.csv, args.feature_columns, pairs),
        seeds,
        budgets,
        tuple(s for s in args.strategies.split(",") if s),
        args.jobs,
        pred_seeds,
        max_trials=args.max_trials,
        variants=ablations(_space(args.space), args.proxy_cache) if args.ablations else None,
        seeds_of=_per_row(args.seeds_of),
        trials_of=_per_row(args.max_trials_of),
    )
    results["elapsed_s"] = time.perf_counter() - t0
    results["loadavg_end"] = list(os.getloadavg())
    results["cpu_s"] = _cpu_seconds()  # this process and its workers: independent of load
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (args.out / "table.md").write_text(table_md(results))
    print(table_md(results))
    return 0


def ablations(
    space: SearchSpace, proxy_cache: Path | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Labelled `frontier` variants on the same target-only features, each without one of the
    default's signals: the zero-cost proxy prior (synflow on the untrained `proxy_build`
    network, picking the initial design), the path encoding (the one-hot code alone), and the
    rank warp of the paid accuracies (the GP on raw accuracies).
    With `proxy_cache` (a `ZeroCostProxy.save` file of every arch's synflow, filled when
    missing, which takes minutes) also one with synflow as a predictor feature of the pool."""
    rows: dict[str, tuple[str, dict[str, Any]]] = {
        "frontier, no synflow prior": ("frontier", {"prior": None}),
        "frontier, one-hot only (no paths)": ("frontier", {"encoding": "onehot"}),
        "frontier, raw accuracies (no rank warp)": ("frontier", {"warp": "none"}),
    }
    if proxy_cache is not None:
        from nas.predictors import ZeroCostProxy

        z = ZeroCostProxy(space, "synflow", build=space.proxy_build).load(proxy_cache)
        if not z.cache:  # a missing file is filled once: every arch of the space
            log.info("scoring every arch with synflow into %s (minutes)", proxy_cache)
            z.many(list(space.enumerate()))
            z.save(proxy_cache)
        options = {"prior": z, "features": {"synflow": z.many}}
        rows["frontier + synflow as a feature (cached)"] = ("frontier", options)
    return rows


def _per_row(items: list[str]) -> dict[str, int]:
    """`ROW=N` options (a strategy or a row's label) as a dictionary."""
    return {k: int(v) for k, _, v in (x.rpartition("=") for x in items)}


def _feature_columns(
    csv: Path, option: str | None, pairs: tuple[tuple[str, str], ...]
) -> list[str]:
    if not option:
        return []
    if option != "all":
        return [c for c in option.split(",") if c]
    header = pd.read_csv(csv, nrows=0).columns  # each pair drops its own target column
    return [str(c) for c in header if str(c).endswith("_ms")]


def _cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    sys.exit(main())

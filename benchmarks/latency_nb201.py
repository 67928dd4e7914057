"""Latency models against real phone and board measurements: NAS-Bench-201 on Pixel 3 and Pi 4.

The measured latencies are HW-NAS-Bench's (Pixel 3 and Raspberry Pi 4 columns of the shared
`nb201.csv`). For each device:

1. **Spec-only**: the emulated profile built from public figures (`pixel3`, `raspi4`),
   uncalibrated, predicts all 15,625 cells; baselines side by side: MACs and parameter count
   (ranking only: Kendall tau does not change under a fitted line).
2. **Calibrated on 100 archs**: for each seed, 100 random cells calibrate the cost model
   (`latency_models.calibrate`), fit a MACs line and a LUT sum + correction (LUT of the
   spec-only profile); all predict the other 15,525 cells. Mean and worst over seeds.
3. **Noise floor**: pairs of cells that are the same network measured twice. Two groupings:
   `canonical_key` (cells computing the same function) and the network the runtime actually
   executes (identical layer lists after dead-branch elimination): only the second is "the
   same network", since the runtime computes what the first merges.

    python benchmarks/latency_nb201.py --out runs/bench/latency_nb201 [--csv PATH] [--quick]

Writes results.json (per-seed values, medians, means, worst, baselines, commit) and table.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latency_models as lm
from latency_models.validate import metrics
from nas.app.config import git_commit
from search_spaces import NB201Space

log = logging.getLogger("latency_nb201")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "benchmarks" / "nb201" / "nb201.csv"
DEVICES = {
    "pixel3": ("nb201-pixel3", "pixel3-emulated"),
    "raspi4": ("nb201-raspi4", "raspi4-emulated"),
}
PREDECESSOR_MACS_TAU = {"pixel3": 0.68, "raspi4": 0.74}


def _pair_floor(groups: dict[Any, list[int]], y: np.ndarray, seeds: int = 20) -> dict[str, float]:
    """Kendall tau and share within +-10 % between two members of each group (random pairs,
    averaged over `seeds` draws)."""
    multi = [g for g in groups.values() if len(g) >= 2]
    taus, w10, w20 = [], [], []
    for s in range(seeds):
        rng = np.random.default_rng(s)
        a, b = [], []
        for g in multi:
            i, j = rng.choice(len(g), 2, replace=False)
            a.append(y[g[i]])
            b.append(y[g[j]])
        m = metrics(np.array(a), np.array(b))
        taus.append(m["kendall_tau"])
        w10.append(m["within_10_pct"])
        w20.append(m["within_20_pct"])
    return {
        "groups": len(multi),
        "archs_in_groups": sum(len(g) for g in multi),
        "kendall_tau": float(np.mean(taus)),
        "within_10_pct": float(np.mean(w10)),
        "within_20_pct": float(np.mean(w20)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--seeds", type=int, default=5, help="draws of the 100 calibration archs")
    parser.add_argument("--n-fit", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="2,000 archs, 2 seeds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = 2 if args.quick else args.seeds
    t_start = time.perf_counter()

    space = NB201Space()
    tables = {
        d: lm.get_device(name, table=args.csv, space=space) for d, (name, _) in DEVICES.items()
    }
    archs = tables["pixel3"].archs()
    if args.quick:
        keep = np.random.default_rng(123).choice(len(archs), 2000, replace=False)
        archs = [archs[int(i)] for i in sorted(keep)]
    n = len(archs)
    y = {d: np.array(t.latencies_ms(archs)) for d, t in tables.items()}

    # One cache of executed (dead-branch-free) specs shared by every emulated device.
    runtime_specs = lm.RuntimeSpecs()
    t0 = time.perf_counter()
    executed = [runtime_specs(space, a) for a in archs]
    t_runtime_specs = time.perf_counter() - t0
    t0 = time.perf_counter()
    costs = [space.cost(a) for a in archs]
    t_plain_specs = time.perf_counter() - t0
    macs = np.array([c.macs for c in costs], dtype=np.float64)
    params = np.array([c.params for c in costs], dtype=np.float64)
    log.info("specs of %d archs: executed %.0f s, plain %.0f s", n, t_runtime_specs, t_plain_specs)

    # Noise floor groupings.
    canon: dict[str, list[int]] = collections.defaultdict(list)
    same_net: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
    for i, (a, specs) in enumerate(zip(archs, executed, strict=True)):
        canon[space.canonical_key(a)].append(i)
        same_net[tuple(s.key for s in specs)].append(i)
    canon.pop("degenerate", None)

    results: dict[str, Any] = {
        "benchmark": "latency_nb201",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "csv": str(args.csv),
        "n_archs": n,
        "n_fit": args.n_fit,
        "seeds": seeds,
        "quick": args.quick,
        "devices": {},
    }
    rows: list[str] = []
    for d, (table_name, emu_name) in DEVICES.items():
        yd = y[d]
        phone = lm.EmulatedDevice(lm.PROFILES[d], runtime_specs=runtime_specs)
        t0 = time.perf_counter()
        spec_only = np.array([phone.arch_ms(space, a) for a in archs])
        t_predict = time.perf_counter() - t0
        entry: dict[str, Any] = {
            "table": table_name,
            "profile": emu_name,
            "spec_only": metrics(spec_only, yd),
            "macs_rank": metrics(macs, yd)["kendall_tau"],
            "params_rank": metrics(params, yd)["kendall_tau"],
            "macs_rank_predecessor": PREDECESSOR_MACS_TAU[d],
            "spec_only_predict_s_per_arch": t_predict / n,
            "noise_floor": {
                "canonical_key": _pair_floor(canon, yd),
                "same_executed_network": _pair_floor(same_net, yd),
            },
            "calibrated": {"costmodel": [], "macs_line": [], "lut+correction": []},
        }
        lut = lm.build_lut(space, phone, None, archs=archs)
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            fit_idx = rng.choice(n, args.n_fit, replace=False)
            mask = np.ones(n, dtype=bool)
            mask[fit_idx] = False
            fit = [archs[int(i)] for i in fit_idx]
            test = [a for a, m in zip(archs, mask, strict=True) if m]
            cal = lm.calibrate(phone, space, fit, yd[fit_idx], runtime_specs=runtime_specs)
            pred = np.array([cal.device.arch_ms(space, a) for a in test])
            m = metrics(pred, yd[mask])
            m["seed"] = seed
            m["removes_dead_branches"] = bool(cal.params.removes_dead_branches)
            m["train_rmse_rel"] = cal.train_rmse_rel
            entry["calibrated"]["costmodel"].append(m)
            line = lm.MacsProxy(d).fit(space, fit, yd[fit_idx])
            slope, intercept = line.coef_ or (0.0, 0.0)
            mp = metrics(slope * macs[mask] / 1e6 + intercept, yd[mask])
            mp["seed"] = seed
            entry["calibrated"]["macs_line"].append(mp)
            corr = lm.LUTCorrected(lut, phone).fit(space, fit, yd[fit_idx])
            mc = metrics(np.maximum(corr.predict_many(space, test), 1e-6), yd[mask])
            mc["seed"] = seed
            entry["calibrated"]["lut+correction"].append(mc)
            log.info(
                "%s seed %d: costmodel tau %.3f (w10 %.1f %%), lut+corr tau %.3f, macs tau %.3f",
                d,
                seed,
                m["kendall_tau"],
                m["within_10_pct"],
                mc["kendall_tau"],
                mp["kendall_tau"],
            )
        summary = {}
        for name, runs in entry["calibrated"].items():
            summary[name] = {
                key: {
                    "mean": statistics.fmean(r[key] for r in runs),
                    "median": statistics.median(r[key] for r in runs),
                    "worst": (
                        min
                        if key in ("kendall_tau", "spearman", "within_10_pct", "within_20_pct")
                        else max
                    )(r[key] for r in runs),
                }
                for key in (
                    "kendall_tau",
                    "spearman",
                    "rmse_ms",
                    "mape_pct",
                    "median_ape_pct",
                    "within_10_pct",
                    "within_20_pct",
                )
            }
        entry["calibrated_summary"] = summary
        results["devices"][d] = entry
        so = entry["spec_only"]
        nf = entry["noise_floor"]
        rows += [
            f"### {d} ({table_name}, profile `{emu_name}`)",
            "",
            f"All {n:,} archs, no measurement used:",
            "",
            "| predictor | Kendall tau | within 10 % | within 20 % | MAPE (%) |",
            "|---|---|---|---|---|",
            f"| spec-only profile (uncalibrated) | {so['kendall_tau']:.3f} | {so['within_10_pct']:.1f} | {so['within_20_pct']:.1f} | {so['mape_pct']:.1f} |",
            f"| MACs (rank only; predecessor measured {PREDECESSOR_MACS_TAU[d]:.2f}) | {entry['macs_rank']:.3f} | - | - | - |",
            f"| params (rank only) | {entry['params_rank']:.3f} | - | - | - |",
            "",
            f"Calibrated on {args.n_fit} random archs, tested on the other {n - args.n_fit:,}; "
            f"{seeds} seeds, mean (worst):",
            "",
            "| predictor | Kendall tau | Spearman | within 10 % | within 20 % | median APE (%) | RMSE (ms) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in summary.items():
            rows.append(
                f"| {name} | {s['kendall_tau']['mean']:.3f} ({s['kendall_tau']['worst']:.3f}) "
                f"| {s['spearman']['mean']:.3f} ({s['spearman']['worst']:.3f}) "
                f"| {s['within_10_pct']['mean']:.1f} ({s['within_10_pct']['worst']:.1f}) "
                f"| {s['within_20_pct']['mean']:.1f} ({s['within_20_pct']['worst']:.1f}) "
                f"| {s['median_ape_pct']['mean']:.1f} ({s['median_ape_pct']['worst']:.1f}) "
                f"| {s['rmse_ms']['mean']:.2f} ({s['rmse_ms']['worst']:.2f}) |"
            )
        rows += [
            "",
            "Noise floor: two archs of one group, measured separately (random pairs, 20 draws):",
            "",
            "| grouping | groups | Kendall tau | within 10 % | within 20 % |",
            "|---|---|---|---|---|",
        ]
        for label, key in (
            ("same function (`canonical_key`)", "canonical_key"),
            ("same executed network (after dead-branch elimination)", "same_executed_network"),
        ):
            f = nf[key]
            rows.append(
                f"| {label} | {f['groups']} | {f['kendall_tau']:.3f} | {f['within_10_pct']:.1f} | {f['within_20_pct']:.1f} |"
            )
        rows.append("")
    results["timing_s"] = {
        "executed_specs": t_runtime_specs,
        "plain_specs": t_plain_specs,
        "total": time.perf_counter() - t_start,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    header = [
        "# Latency models on NAS-Bench-201: Pixel 3 and Raspberry Pi 4 (HW-NAS-Bench measurements)",
        "",
        f"commit `{results['commit'][:10]}`, {n:,} archs{' (quick)' if args.quick else ''}, "
        f"`python benchmarks/latency_nb201.py --out {args.out}`",
        "",
    ]
    (args.out / "table.md").write_text("\n".join(header + rows) + "\n")
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()

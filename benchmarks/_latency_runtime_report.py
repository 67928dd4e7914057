"""The real-runtime latency benchmark's results: this run's cases merged over the previous
results.json, build times carried from the run that measured them, the summary and the table
(benchmarks/latency_runtime.py measures the cases; this module reads them)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PASSES = 3
"""Passes per estimate, at least: test = min over passes 0, 2, 4; retest = min over 1, 3, 5;
fit = min over 0, 1, 2. A case measured with more (`--passes`) uses every pass stored, odd
against even, and as many fitting passes."""


__all__ = [
    "PASSES",
    "carry_lut_build_times",
    "median_taus",
    "merge_results",
    "more",
    "table",
    "write_results",
]


def merge_results(
    results: dict[str, Any], previous: dict[str, Any], plan: list[tuple[str, str, int, int]]
) -> dict[str, Any]:
    """This run's cases laid over those of the previous results.json (when it was run with the
    same --quick, --max-archs and --seed): a run of some devices or cases updates those and
    keeps the others, each case labelled with the commit that measured it; cases in `plan`'s
    order."""
    if not previous or any(previous.get(k) != results[k] for k in ("quick", "max_archs", "seed")):
        return results
    order = {(space, dtype): i for i, (space, dtype, _, _) in enumerate(plan)}
    plans = {(p[0], p[1]): p for p in [*previous.get("plan", []), *results["plan"]]}
    merged = {**results, "plan": sorted(plans.values(), key=lambda p: order.get((p[0], p[1]), 99))}
    merged["devices"] = {}
    old_devices = previous.get("devices", {})
    for name in dict.fromkeys([*old_devices, *results["devices"]]):
        new, old = results["devices"].get(name), old_devices.get(name)
        if new is None or old is None:
            merged["devices"][name] = new if old is None else old
            continue
        cases = {
            (c["space"], c["dtype"]): {"commit": previous.get("commit", "unknown"), **c}
            for c in old["cases"]
        }
        cases.update({(c["space"], c["dtype"]): c for c in new["cases"]})
        merged["devices"][name] = {
            **old,
            **new,
            "cases": sorted(cases.values(), key=lambda c: order.get((c["space"], c["dtype"]), 99)),
            "pending": [p for p in new.get("pending", []) if tuple(p.split()) not in cases],
        }
    return merged


def _lut_build(lut: dict[str, Any]) -> str:
    timed = lut.get("layers_measured_this_run", 1)
    if timed or "earlier_run" not in lut:
        return f"{lut['build_s_this_run']:.1f} ({timed} layer timings)"
    earlier = lut["earlier_run"]
    return f"{earlier['build_s']:.1f} (run at `{earlier['commit'][:10]}`)"


def carry_lut_build_times(results: dict[str, Any], previous: dict[str, Any]) -> None:
    """A case whose LUT was complete before this run measured nothing now: keep the build time
    of the run that measured it (from the previous results.json), labelled with its commit;
    a kernel table read as stored keeps the build figures of the run that built it."""
    for dev, entry in results["devices"].items():
        old_cases = {
            (c["space"], c["dtype"]): c
            for c in previous.get("devices", {}).get(dev, {}).get("cases", [])
        }
        for c in entry["cases"]:
            lut = c["lut"]
            old = old_cases.get((c["space"], c["dtype"]))
            if lut["layers_measured_this_run"] or old is None:
                continue
            old_lut = old["lut"]
            if old_lut.get("layers_measured_this_run", 1) and old_lut["build_s_this_run"] >= 0.5:
                lut["earlier_run"] = {
                    "build_s": old_lut["build_s_this_run"],
                    "commit": previous.get("commit", "unknown"),
                }
            elif "earlier_run" in old_lut:
                lut["earlier_run"] = old_lut["earlier_run"]
        for c in entry["cases"]:
            kernels, old = c.get("kernels"), old_cases.get((c["space"], c["dtype"]))
            old_kernels = (old or {}).get("kernels") or {}
            if kernels and "build_s_this_run" not in kernels and old_kernels:
                for k in ("build_s_this_run", "kernels_measured_this_run"):
                    if k in old_kernels:
                        kernels[k] = old_kernels[k]


def more(case: dict[str, Any], commit: str = "") -> str:
    """A case's passes where they differ from the default, and the commit that measured it
    where another run did."""
    n = case.get("passes_per_estimate", PASSES)
    k = len(case.get("passes", {}).get("fit", range(PASSES)))
    more = f" ({n}+{n} passes, fit {k})" if (n, k) != (PASSES, PASSES) else ""
    if commit and case.get("commit", commit) != commit:
        more += f" (run at `{case['commit'][:10]}`)"
    return more


def table(results: dict[str, Any]) -> str:
    """The readable table of results.json: per device, each case's predictors, its LUT and
    kernel table, and the cross-space transfer."""
    lines = [
        "# Latency models against real runtimes on this machine",
        "",
        f"commit `{results['commit'][:10]}`{' (quick)' if results['quick'] else ''}; "
        "targets: Kendall tau >= 0.95, >= 95 % within +-10 %; a latency is the minimum over "
        f"{PASSES} interleaved passes (test: passes 0, 2, 4; retest: 1, 3, 5; fit: 0, 1, 2) "
        "unless the case says more (test: even passes; retest: odd; fit: as many as test)",
        "",
    ]
    for dev, entry in results["devices"].items():
        lines += [
            f"## {dev}",
            "",
            "| space | dtype | test/fit archs | median arch ms | test-retest tau / w10 | predictor | tau | w10 % | w20 % | median APE % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in entry["cases"]:
            tr = c["test_retest"]
            first = True
            for name, m in c["metrics"].items():
                lead = (
                    f"| {c['space']} | {c['dtype']} | {c['n_test']}/{c['n_fit']}{more(c, results['commit'])} | "
                    f"{c['median_over_archs_ms']['test']:.3f} | {tr['kendall_tau']:.3f} / {tr['within_10_pct']:.0f} "
                    if first
                    else "| | | | | "
                )
                lines.append(
                    f"{lead}| {name} | {m['kendall_tau']:.3f} | {m['within_10_pct']:.1f} | "
                    f"{m['within_20_pct']:.1f} | {m['median_ape_pct']:.1f} |"
                )
                first = False
        lines += [
            "",
            "| space | dtype | unique layers | LUT entries | LUT passes | LUT build s this run (measuring only; lowering ahead is not counted) |",
            "|---|---|---|---|---|---|",
        ]
        for c in entry["cases"]:
            lut = c["lut"]
            lines.append(
                f"| {c['space']} | {c['dtype']} | {lut['unique_layers']} | {lut['entries']} | "
                f"{lut.get('passes', 1)} | {_lut_build(lut)} |"
            )
        kernel_cases = [c for c in entry["cases"] if c.get("kernels")]
        if kernel_cases:
            lines += [
                "",
                "| space | dtype | unique kernels (optimised graphs of the case's archs) | table entries | passes | kernel table s this run (graphs + timing) |",
                "|---|---|---|---|---|---|",
            ]
            for c in kernel_cases:
                k = c["kernels"]
                built = k.get("build_s_this_run")
                shown = (
                    f"{built:.0f} ({k['kernels_measured_this_run']} kernel timings)"
                    if built is not None
                    else "stored"
                )
                lines.append(
                    f"| {c['space']} | {c['dtype']} | {k['unique_kernels']} | {k['entries']} | "
                    f"{k['passes']} | {shown} |"
                )
        if entry.get("pending"):
            lines += ["", f"Not fully measured yet: {', '.join(entry['pending'])}."]
        cross = entry.get("cross_space")
        if cross:
            lines += [
                "",
                f"Cost model calibrated on nb201 fp32 only ({cross['n_archs']} archs), other spaces unchanged:",
                "",
                "| target | tau (transferred) | w10 % (transferred) | tau (calibrated on own space) |",
                "|---|---|---|---|",
            ]
            for name, t in cross["targets"].items():
                lines.append(
                    f"| {name} | {t['transferred']['kendall_tau']:.3f} | {t['transferred']['within_10_pct']:.1f} | "
                    f"{t['calibrated_on_own_space']['kendall_tau']:.3f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict[str, Any]) -> None:
    """results.json and table.md into `out`."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results))


def median_taus(merged: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per device and predictor, the median Kendall tau over the cases."""
    taus: dict[str, dict[str, list[float]]] = {}
    for name, entry in merged["devices"].items():
        for c in entry["cases"]:
            for pred, m in c["metrics"].items():
                taus.setdefault(name, {}).setdefault(pred, []).append(m["kendall_tau"])
    return {dev: {p: statistics.median(v) for p, v in preds.items()} for dev, preds in taus.items()}

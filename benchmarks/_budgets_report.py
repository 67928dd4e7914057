"""The budgets benchmark's summary: shares within budget before and after the re-check, the
accuracy cost of each margin mode against no margin, the targets, and the table
(benchmarks/budgets.py runs the cases; this module reads their rows)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MARGINS: dict[str, str | float] = {"none": 0.0, "auto": "auto", "fixed10": 0.1}


def _share(rows: list[dict[str, Any]], field: str = "within") -> float | None:
    flags = [w for r in rows for w in r[field]]
    return float(np.mean(flags)) if flags else None


def _after_share(rows: list[dict[str, Any]]) -> float | None:
    """Within budget after the re-check: on a real runtime judged by a fresh measurement the
    re-check did not choose on; elsewhere the device's figure is deterministic."""
    real = [r for r in rows if r["kind"] == "real"]
    other = [r for r in rows if r["kind"] != "real"]
    flags = [w for r in real for w in r["fresh_within"]]
    flags += [w for r in other for w in r["after_within"]]
    return float(np.mean(flags)) if flags else None


def _cost(rows: list[dict[str, Any]], mode: str, field: str = "mean_test_accuracy") -> list[float]:
    """Per case: mean test accuracy of the no-margin winners (before any re-check) minus this
    mode's (`field`: before the re-check, or `after_mean_test_accuracy`)."""
    base = {_case(r): r for r in rows if r["margin_mode"] == "none"}
    out = []
    for r in rows:
        b = base.get(_case(r))
        if r["margin_mode"] != mode or not b or b["mean_test_accuracy"] is None:
            continue
        if r[field] is not None:
            out.append(b["mean_test_accuracy"] - r[field])
    return out


def _case(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["space"], r["device"], r["seed"], r["percentile"])


def _misses_within_retest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Real-runtime misses of `auto` after the re-check (fresh figure over budget): how far
    over, against the winner's test-retest spread."""
    out = []
    for r in rows:
        if r["kind"] != "real" or r["margin_mode"] != "auto":
            continue
        for f, spread in zip(r["fresh_ms"], r["retest_spread"], strict=True):
            if f > r["budget_ms"]:
                out.append({"over": f / r["budget_ms"] - 1, "spread": spread})
    return {"n": len(out), "all_within_spread": all(m["over"] <= m["spread"] for m in out)}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict[str, Any]], noise: float | None) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for device in sorted({r["device"] for r in rows}):
        mine = [r for r in rows if r["device"] == device]
        groups[device] = {}
        for mode in MARGINS:
            rows_m = [r for r in mine if r["margin_mode"] == mode]
            groups[device][mode] = {
                "within_share": _share(rows_m),
                "after_recheck_share": _after_share(rows_m),
                "replaced": int(sum(r["replaced"] for r in rows_m)),
                "cost_pts_mean": _mean(_cost(mine, mode)),
                "after_cost_pts_mean": _mean(_cost(mine, mode, "after_mean_test_accuracy")),
                "margin_median": float(np.median([r["margin"] for r in rows_m])),
            }
    auto = [r for r in rows if r["margin_mode"] == "auto"]
    emulated = [r for r in auto if r["kind"] == "emulated"]
    real = [r for r in auto if r["kind"] != "emulated"]
    tiny = [r for r in rows if r["space"] == "tiny"]
    diff = [a - f for a, f in zip(_cost(tiny, "auto"), _cost(tiny, "fixed10"), strict=True)]
    targets = {
        "emulated_within_budget_share": _after_share(emulated),
        "real_within_budget_share": _after_share(real),
        "emulated_within_budget_share_before_recheck": _share(emulated),
        "real_within_budget_share_before_recheck": _share(real),
        "auto_minus_fixed10_cost_pts": _mean(diff),
        "auto_minus_fixed10_cost_pts_nb201": _nb201_diff(rows),
        "diff_ci95_pts": noise,
        "real_misses": _misses_within_retest(rows),
    }
    return {"per_device": groups, "targets": targets}


def _nb201_diff(rows: list[dict[str, Any]]) -> float | None:
    nb = [r for r in rows if r["space"] == "nb201"]
    diff = [a - f for a, f in zip(_cost(nb, "auto"), _cost(nb, "fixed10"), strict=True)]
    return float(np.mean(diff)) if diff else None


def with_earlier(
    path: Path, part: str, rows: list[dict[str, Any]], info: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """This call's rows of `part` with the other part's rows of the results already in `path`."""
    if not path.exists():
        return rows, info
    earlier = json.loads(path.read_text())
    kept = [
        r for r in earlier.get("rows", []) if r["space"] != ("tiny" if part == "tiny" else "nb201")
    ]
    return kept + rows, {**earlier.get("info", {}), **info}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(summary: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        "| device | margin | median margin | within budget, search's winners | cost (pts) | "
        "replaced by the re-check | within budget after it | cost after it (pts) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for device, modes in summary["per_device"].items():
        for mode, s in modes.items():
            lines.append(
                f"| {device} | {mode} | {100 * s['margin_median']:.2f} % | "
                f"{_pct(s['within_share'])} | {_fmt(s['cost_pts_mean'])} | {s['replaced']} | "
                f"{_pct(s['after_recheck_share'])} | {_fmt(s['after_cost_pts_mean'])} |"
            )
    t = summary["targets"]
    lines += ["", "Targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items())]
    lines += ["", f"Load average during the run: {info.get('loadavg')}, {os.cpu_count()} CPUs."]
    return "\n".join(lines) + "\n"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"

"""A real runtime's derived archs timed again after the run (benchmarks/hwtrain.py
`--remeasure-real N`): each row's figure is taken while the run trains the next rows, on a host
that may be shared; timing every derived arch N more times, interleaved across rows so that a
drift in the host spreads over all of them, separates the latency model's error from the
host's test-retest spread. The in-run figure stays the contract's; these are a labelled variant."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks._hwtrain_report import ALLOWANCE_PCT, row_name

__all__ = ["remeasure_real_rows"]


def remeasure_real_rows(rows: list[dict[str, Any]], out: Path, repeats: int) -> None:
    """Add `remeasured_ms` (every repeat), `remeasured_median_ms`, `remeasured_err_pct` and
    `remeasured_excess_pct` (error minus the row's allowance) to each real-runtime row, in
    place; cached per row in its folder's `remeasured.json` (a rerun reads it back)."""
    import latency_models as lm
    from search_spaces import get_space

    real = [r for r in rows if r["kind"] == "real"]
    todo = []
    for row in real:
        cache = _folder(row, out) / "remeasured.json"
        found = json.loads(cache.read_text()) if cache.is_file() else None
        if found is not None and len(found["remeasured_ms"]) == repeats:
            row |= found
        else:
            todo.append(row)
    if not todo:
        return
    times: dict[int, list[float]] = {id(r): [] for r in todo}
    devices = {name: lm.get_device(name) for name in {r["device"] for r in todo}}
    for _ in range(repeats):  # interleaved: repeat k of every row before repeat k + 1
        for row in todo:
            space = get_space(row["space"])
            arch = space.from_key(row["derived_key"])
            times[id(row)].append(
                float(devices[row["device"]].measure_arch(space, arch).latency_ms)
            )
    for row in todo:
        found = _summary(row, times[id(row)])
        row |= found
        (_folder(row, out) / "remeasured.json").write_text(json.dumps(found, indent=1))


def _summary(row: dict[str, Any], times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    err = 100 * abs(median - row["target_ms"]) / row["target_ms"]
    return {
        "remeasured_ms": times,
        "remeasured_median_ms": median,
        "remeasured_spread_pct": 100 * (max(times) - min(times)) / median,
        "remeasured_err_pct": err,
        "remeasured_excess_pct": err - (row["heldout_p95_pct"] + ALLOWANCE_PCT),
    }


def _folder(row: dict[str, Any], out: Path) -> Path:
    keys = ("space", "device", "percentile", "relaxation", "seed")
    return out / row_name(*(row[k] for k in keys))

"""`timings.json` of a run folder: the wall time of every stage in every invocation."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RunTimings",
    "load_timings",
    "stage_totals",
]


class RunTimings:
    """`timings.json`: the wall time of every stage in every invocation of a run folder.

    A resumed run skips finished stages in a fraction of a second; keeping each invocation
    (instead of overwriting) lets the report show what the work really cost, summed over the
    invocations that did it, beside what the last invocation took.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "timings.json"
        self.runs = load_timings(run_dir)
        self.runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}})

    def record(self, stage: str, seconds: float) -> None:
        self.runs[-1]["stages"][stage] = round(seconds, 2)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"runs": self.runs}, indent=1))
        tmp.replace(self.path)


def load_timings(run_dir: str | Path) -> list[dict[str, Any]]:
    """The invocations recorded in `run_dir/timings.json` (oldest first; [] if none)."""
    path = Path(run_dir) / "timings.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{path}: expected {{'runs': [...]}}; delete the file to start afresh")
    return runs


def stage_totals(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per stage summed over invocations (a killed stage's time counts too)."""
    totals: dict[str, float] = {}
    for run in runs:
        for stage, seconds in run.get("stages", {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    return totals

"""`nas price`: the free metrics of sampled archs (MACs, params, peak activation memory),
priced through an Optuna study into a run folder without training anything.

Writes `study.db` (SQLite, resumable), `archs.csv`, `pareto.csv`, `cost_scatter.png` and
`report.md`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from nas import search, viz
from nas.core.space import SearchSpace

__all__ = ["price_archs"]

log = logging.getLogger(__name__)


def price_archs(space: SearchSpace, out: Path, n_trials: int = 200, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    study = search.price_study(
        space,
        n_trials,
        storage=search.sqlite_url(out / "study.db"),
        study_name="price",
        seed=seed,
    )
    frame = search.trials_frame(study)
    frame.to_csv(out / "archs.csv", index=False)
    objectives = list(search.COST_OBJECTIVES)
    front = search.pareto_frame(study)
    front.sort_values("macs").to_csv(out / "pareto.csv", index=False)
    fig = viz.plot_cost_scatter(
        frame, path=out / "cost_scatter.png", title=f"{space.name}: {len(frame)} archs priced"
    )
    viz.close(fig)
    elapsed = time.perf_counter() - t0
    (out / "config.json").write_text(
        json.dumps({"space": space.name, "n_trials": n_trials, "seed": seed}, indent=2)
    )
    lines = [
        f"# Run report: {out.name}",
        "",
        f"Space `{space.name}` ({space.size():,} distinct archs), {len(frame)} archs priced "
        f"through an Optuna study in {elapsed:.1f} s.",
        "",
        "| | MACs (M) | params (k) | peak activation memory (KiB) |",
        "|---|---|---|---|",
    ]
    for label, fn in (("min", "min"), ("median", "median"), ("max", "max")):
        row = frame[objectives].agg(fn)
        lines.append(
            f"| {label} | {row['macs'] / 1e6:.2f} | {row['params'] / 1e3:.1f} | "
            f"{row['peak_activation_bytes'] / 1024:.0f} |"
        )
    lines += [
        "",
        f"Pareto-optimal archs (all three objectives minimised): {len(front)}; see `pareto.csv`.",
        "",
        "![cost scatter](cost_scatter.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    log.info("wrote %s", out)
    return out

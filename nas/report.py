"""The run report: `report.md` in the run folder, with the plots beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from nas import viz


def _table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    if frame.empty:
        return "_(none)_"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(format(v, floatfmt) if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(state: Any) -> Path:
    """Write `report.md` (and the Pareto plot) from a pipeline `RunState`."""
    from nas.search import trials_frame

    run_dir: Path = state.run_dir
    cfg = state.config
    lines = [
        f"# Run report: {cfg.name}",
        "",
        f"Space `{state.space.name}` ({state.space.size():,} distinct archs) on data "
        f"`{cfg.data.name}`; supernet `{cfg.supernet.schedule}` for {cfg.supernet.epochs} "
        f"epochs; search `{cfg.search.sampler}` with {cfg.search.trials} accuracy evaluations; "
        f"budgets: {dict(cfg.search.budgets) or 'none'}; seed {cfg.seed}.",
        "",
    ]
    timings_path = run_dir / "timings.json"
    if timings_path.exists():
        timings = json.loads(timings_path.read_text())
        total = sum(timings.values())
        lines += [
            "## Wall time per stage (s)",
            "",
            " | ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f" | **total {total:.0f}**",
            "",
        ]
    if state.predictor_quality:
        q = state.predictor_quality
        lines += [
            "## Accuracy predictor",
            "",
            f"`{cfg.accuracy.predictor}` fitted on {q['n_fit']} archs (inherited-weight "
            f"accuracy), ranked {q['n_test']} held-out archs: Kendall tau "
            f"{q['kendall_tau']:.2f}, Spearman {q['spearman']:.2f}, RMSE {q['rmse']:.2f} points.",
            "",
        ]
    if state.latency_models:
        lines += ["## Latency models", ""]
        for label, model in state.latency_models.items():
            lut = getattr(model, "lut", None)
            n = len(lut) if lut is not None else 0
            text = f"- `{label}`: {type(model).__name__}, LUT of {n} unique layers"
            q = state.latency_quality.get(label)
            if q:
                text += (
                    f"; on {q['n_test']} held-out networks measured end to end: plain sum "
                    f"tau {q['lut_kendall_tau']:.2f}, MAPE {q['lut_mape_pct']:.1f} %; with the "
                    f"correction fitted on {q['n_fit']}: tau {q['corrected_kendall_tau']:.2f}, "
                    f"MAPE {q['corrected_mape_pct']:.1f} %, "
                    f"{q['corrected_within_10_pct']:.0f} % within +-10 %"
                )
            lines.append(text)
        lines.append("")
    if state.study is not None:
        frame = trials_frame(state.study)
        lat_cols = [c for c in frame.columns if str(c).startswith("latency_ms@")]
        if lat_cols and "accuracy" in frame.columns:
            fig = viz.plot_fronts_per_device(frame, path=run_dir / "pareto_fronts.png")
            viz.close(fig)
            lines += [
                "## Pareto fronts per device",
                "",
                f"{len(frame)} trials; fronts of predicted latency against inherited-weight "
                "accuracy (`pareto.csv`, `trials.csv`).",
                "",
                "![Pareto fronts](pareto_fronts.png)",
                "",
            ]
    if state.winners is not None:
        lines += [
            "## Winners: predicted against measured",
            "",
            "Accuracies in % (validation during the search, test after); latency in ms, "
            "predicted by the latency model and measured again on the device.",
            "",
            _table(state.winners),
            "",
        ]
    for key, table in state.compress_tables.items():
        lines += [f"## Compression of `{key}`", "", table, ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out

"""The run report: `report.md` in the run folder, with the plots beside it."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from nas import viz
from nas.app.timings import load_timings, stage_totals

__all__ = [
    "STAGE_SECTIONS",
    "budget_checks",
    "headline_frame",
    "markdown_to_html",
    "register_report_section",
    "write_report",
]

Section = Callable[[Any], list[str]]

STAGE_SECTIONS: dict[str, Section] = {}
"""The report sections of optional stages (hardware-aware training, on-device learning,
federated rounds), after the built-in ones, in the order they were registered. Each returns
its markdown lines from the `RunState`, or nothing when its stage is off or never ran."""


def register_report_section(name: str, section: Section) -> Section:
    """Add an optional stage's section to every report (by the stage's name)."""
    STAGE_SECTIONS[name] = section
    return section


def _table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    if frame.empty:
        return "_(none)_"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            text = format(v, floatfmt) if isinstance(v, float) else str(v)
            cells.append(text.replace("|", "\\|"))  # arch keys hold "|": keep the columns
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(state: Any) -> Path:
    """Write `report.md` and `report.html` (and the Pareto plot) from a pipeline `RunState`."""
    sections = (
        _intro,
        _budget_section,
        _headline_section,
        _timings_section,
        _predictor_section,
        _latency_section,
        _fronts_section,
        _winners_section,
        _compress_sections,
    )
    lines = [f"# Run report: {state.config.name}", ""]
    for section in (*sections, *STAGE_SECTIONS.values()):
        lines += section(state)
    out = state.run_dir / "report.md"
    text = "\n".join(lines)
    out.write_text(text)
    page = markdown_to_html(text.splitlines(), title=f"Run report: {state.config.name}")
    (state.run_dir / "report.html").write_text(page)
    return out


def _intro(state: Any) -> list[str]:
    cfg = state.config
    return [
        f"Space `{state.space.name}` ({state.space.size():,} distinct archs) on data "
        f"`{cfg.data.name}`; supernet `{cfg.supernet.schedule}` for {cfg.supernet.epochs} "
        f"epochs; search `{cfg.search.sampler}` with {cfg.search.trials} accuracy evaluations; "
        f"budgets: {dict(cfg.search.budgets) or 'none'}; seed {cfg.seed}.",
        "",
    ]


def _budget_section(state: Any) -> list[str]:
    """The headline: the promise a user buys. Does each winner keep every budget on the
    device's own figure (measured on a real device, priced whole on an emulated one, the
    table's on a table device), not only as predicted? With the margin each budget kept,
    the winners the device's figure replaced, and a budget nothing in the study keeps."""
    lines = [f"**{miss.sentence()}.**" for miss in getattr(state, "misses", [])]
    lines += _margin_lines(state) + _replaced_lines(state)
    checks = pd.DataFrame()
    if state.winners is not None and not state.winners.empty:
        checks = budget_checks(state.winners, _constraints(state), state.latency_models)
    if not checks.empty:
        lines.insert(0, _budget_sentence(checks, len(state.winners)))
    if not lines:
        return []
    table = _headline_budget_table(state, checks) if not checks.empty else ""
    return ["## Headline: budgets on each device", "", *_paragraphs(lines), table, ""]


def _paragraphs(lines: list[str]) -> list[str]:
    return [x for line in lines for x in (line, "")]


def _budget_sentence(checks: pd.DataFrame, n: int) -> str:
    missed = checks[~checks["kept"]]
    if missed.empty:
        return (
            f"All {n} winner(s) keep every budget on the device's own figure (measured on "
            "real devices, the whole network priced on emulated ones)."
        )
    worst = missed.sort_values("over %", ascending=False).iloc[0]
    return (
        f"**Budget missed**: {missed['winner'].nunique()} of {n} winner(s) exceed a budget "
        f"on the device's own figure, although the search predicted them within it; worst: "
        f"winner {worst['winner']} at {worst['measured']:.4g} against "
        f"`{worst['budget']}` ({worst['over %']:+.1f} %, predicted {worst['predicted']:.4g})."
    )


def _margin_lines(state: Any) -> list[str]:
    return [
        f"Budget on `{metric}`: the search kept a margin of {margin.describe()}."
        for metric, margin in getattr(state, "margins", {}).items()
    ]


def _replaced_lines(state: Any) -> list[str]:
    rejected = list(getattr(state, "rejected", []))
    if not rejected:
        return []
    items = "; ".join(
        f"`{r.arch_key}` ({r.device_ms:.4g} ms on the device against `{r.budget}`, predicted "
        f"{r.predicted_ms:.4g}) -> " + (f"`{r.replaced_by}`" if r.replaced_by else "nothing")
        for r in rejected
    )
    return [
        f"{len(rejected)} arch(s) the search ranked as winners were over a budget on the "
        f"device's own figure and were replaced by the next feasible arch: {items}."
    ]


_HOW = {"real": "measured", "emulated": "priced whole", "tabular": "the table's"}


def _headline_budget_table(state: Any, checks: pd.DataFrame) -> str:
    """One row per winner and budget: budget, predicted, the device's figure, met or missed."""
    from nas.search.objectives import latency_metric_name

    kinds = {}
    for label, model in state.latency_models.items():
        device = getattr(state, "devices", {}).get(label)
        kinds[latency_metric_name(model)] = _HOW.get(getattr(device, "kind", ""), "measured")
    acc = list(state.winners.get("test_accuracy", [None] * len(state.winners)))
    rows = []
    for _, c in checks.iterrows():
        metric = str(c["budget"]).split(" ")[0]
        rows.append(
            {
                "winner": c["winner"],
                "test top-1 %": acc[int(str(c["winner"]).lstrip("#")) - 1],
                "budget": c["budget"],
                "predicted": c["predicted"],
                "device figure": c["measured"],
                "how": kinds.get(metric, "exact"),
                "over %": c["over %"],
                "met": "met" if c["kept"] else "**missed**",
            }
        )
    return _table(pd.DataFrame(rows))


def _constraints(state: Any) -> list[tuple[str, str, float]]:
    from nas.app.budgets import stored_constraints

    return stored_constraints(state.study, dict(state.config.search.budgets))


_COST_COLUMNS = {"macs": "macs", "params": "params", "peak_activation_bytes": "peak_bytes"}


def budget_checks(
    winners: pd.DataFrame,
    constraints: list[tuple[str, str, float]],
    latency_models: dict[str, Any],
) -> pd.DataFrame:
    """One row per winner and budget: the predicted figure and the device's own figure against
    the bound. Latency budgets are read from the winners' `predicted_ms@LABEL` and
    `measured_ms@LABEL` columns of the latency model that prices that metric; MACs, params,
    peak memory and training memory are exact (predicted and measured are the same number)."""
    from nas.search.objectives import latency_metric_name

    columns: dict[str, tuple[str, str]] = {
        latency_metric_name(model): (f"predicted_ms@{label}", f"measured_ms@{label}")
        for label, model in latency_models.items()
    }
    columns.update({m: (c, c) for m, c in _COST_COLUMNS.items()})
    # exact like the costs: the memory model's figure (`nas.app.train_memory`)
    columns.update({m: (m, m) for m in winners.columns if m.startswith("train_memory_bytes@")})
    columns["accuracy"] = ("val_accuracy", "test_accuracy")
    rows = []
    for i, (_, winner) in enumerate(winners.iterrows(), 1):
        for metric, op, bound in constraints:
            predicted_col, measured_col = columns.get(metric, ("", ""))
            if measured_col not in winners.columns:
                continue
            measured = float(winner[measured_col])
            predicted = float(winner.get(predicted_col, measured))
            kept = measured <= bound if op == "<=" else measured >= bound
            rows.append(
                {
                    "winner": f"#{i}",
                    "budget": f"{metric} {op} {bound:g}",
                    "predicted": predicted,
                    "measured": measured,
                    "over %": 100 * (measured / bound - 1) if op == "<=" else 0.0,
                    "kept": kept,
                }
            )
    return pd.DataFrame(rows)


def _headline_section(state: Any) -> list[str]:
    headline = headline_frame(state.compress_rows)
    if headline.empty:
        return []
    return [
        "## Headline: what each winner became",
        "",
        "The inherited subnet as the search found it, against the fastest artifact the "
        "compression chain exported (measured in its runtime; accuracy on the test set).",
        "",
        _table(headline),
        "",
    ]


def _timings_section(state: Any) -> list[str]:
    runs = load_timings(state.run_dir)
    if not runs:
        return []
    totals = stage_totals(runs)
    last = runs[-1]["stages"]
    lines = [
        "## Wall time per stage (s)",
        "",
        f"Summed over the {len(runs)} invocation(s) of this run folder"
        + (" (a resumed invocation skips finished stages)" if len(runs) > 1 else "")
        + ".",
        "",
        "| stage | " + " | ".join(totals) + " | total |",
        "|---|" + "---|" * (len(totals) + 1),
        "| all invocations | "
        + " | ".join(f"{v:.0f}" for v in totals.values())
        + f" | **{sum(totals.values()):.0f}** |",
    ]
    if len(runs) > 1:
        lines.append(
            "| last invocation | "
            + " | ".join(f"{last.get(k, 0.0):.1f}" for k in totals)
            + f" | {sum(last.values()):.1f} |"
        )
    return [*lines, ""]


def _predictor_section(state: Any) -> list[str]:
    q = state.predictor_quality
    if not q:
        return []
    return [
        "## Accuracy predictor",
        "",
        f"`{state.config.accuracy.predictor}` fitted on {q['n_fit']} archs (inherited-weight "
        f"accuracy), ranked {q['n_test']} held-out archs: Kendall tau "
        f"{q['kendall_tau']:.2f}, Spearman {q['spearman']:.2f}, RMSE {q['rmse']:.2f} points.",
        "",
    ]


def _latency_section(state: Any) -> list[str]:
    if not state.latency_models:
        return []
    lines = ["## Latency models", ""]
    for label, model in state.latency_models.items():
        lut = getattr(model, "lut", None)
        n = len(lut) if lut is not None else 0
        what = "kernels" if type(model).__name__ == "KernelSum" else "layers"
        text = f"- `{label}`: {type(model).__name__}, table of {n} unique {what}"
        q = state.latency_quality.get(label)
        if q:
            fitted = "fitted" if what == "kernels" else "with the correction fitted"
            text += (
                f"; on {q['n_test']} held-out networks against the device's own figure: plain "
                f"sum tau {q['lut_kendall_tau']:.2f}, MAPE {q['lut_mape_pct']:.1f} %; "
                f"{fitted} on {q['n_fit']}: tau {q['corrected_kendall_tau']:.2f}, "
                f"MAPE {q['corrected_mape_pct']:.1f} %, "
                f"{q['corrected_within_10_pct']:.0f} % within +-10 %"
            )
            if "model" in q:
                text += (
                    f"; the run uses the {q['model']} model (measured / predicted: 90th "
                    f"percentile {q['ratio_p90']:.3f}, 95th {q['ratio_p95']:.3f})"
                )
        lines.append(text)
    return [*lines, ""]


def _fronts_section(state: Any) -> list[str]:
    from nas.search import trials_frame

    if state.study is None:
        return []
    frame = trials_frame(state.study)
    lat_cols = [c for c in frame.columns if str(c).startswith("latency_ms@")]
    if not lat_cols or "accuracy" not in frame.columns:
        return []
    fig = viz.plot_fronts_per_device(frame, path=state.run_dir / "pareto_fronts.png")
    viz.close(fig)
    return [
        "## Pareto fronts per device",
        "",
        f"{len(frame)} trials; fronts of predicted latency against inherited-weight "
        "accuracy (`pareto.csv`, `trials.csv`).",
        "",
        "![Pareto fronts](pareto_fronts.png)",
        "",
    ]


def _winners_section(state: Any) -> list[str]:
    if state.winners is None:
        return []
    return [
        "## Winners: predicted against measured",
        "",
        "Accuracies in % (validation during the search, test after); latency in ms, "
        "predicted by the latency model and measured again on the device.",
        "",
        _table(state.winners),
        "",
    ]


def _compress_sections(state: Any) -> list[str]:
    lines: list[str] = []
    for key, table in state.compress_tables.items():
        lines += [f"## Compression of `{key}`", "", table, ""]
    return lines


def headline_frame(compress_rows: dict[str, list[Any]]) -> pd.DataFrame:
    """One line per compressed winner and device: the inherited subnet as the search found it
    against the fastest artifact exported for that device, accuracy, MACs, size and measured
    latency side by side (the same device on both sides, so the speed-up means something)."""
    lines = []
    for i, rows in enumerate(compress_rows.values(), 1):
        start = next((r for r in rows if r.step == "input"), None)
        artifacts = [r for r in rows if r.step == "export"]
        if start is None or not artifacts:
            continue
        devices = list(start.latency_ms) or sorted({d for r in artifacts for d in r.latency_ms})
        for device in devices:
            timed = [r for r in artifacts if r.latency_ms.get(device)]
            if not timed:
                continue
            best = min(timed, key=lambda r: r.latency_ms[device])
            start_ms = start.latency_ms.get(device)
            best_ms = best.latency_ms[device]
            lines.append(
                {
                    "winner": f"#{i}",
                    "device": device,
                    "inherited top-1 %": _pct(start.accuracy),
                    "inherited MACs": start.macs,
                    "inherited ms": start_ms,
                    "fastest artifact": f"{best.file} ({best.model})",
                    "top-1 %": _pct(best.accuracy),
                    "runtime agreement %": _pct(best.top1_agreement),
                    "MACs": best.macs,
                    "file bytes": best.size_bytes,
                    "ms": best_ms,
                    "speed-up": start_ms / best_ms if start_ms and best_ms else None,
                }
            )
    return pd.DataFrame(lines)


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)"), r'<img alt="\1" src="\2">'),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}"
    "td,th{border:1px solid #ccc;padding:.2rem .4rem;text-align:right}"
    "td:first-child,th:first-child{text-align:left;word-break:break-all;max-width:28rem}"
    "img{max-width:100%}code{background:#f4f4f4}"
)


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(row: str) -> list[str]:
    """A pipe-table row's cells; an escaped pipe (\\|) is part of a cell."""
    cells = re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(lines: list[str], title: str = "report") -> str:
    """The report's own Markdown (headings, paragraphs, lists, pipe tables, images, bold,
    code) as one self-contained HTML page; images stay files beside it."""
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            head, rest = _cells(rows[0]), [r for r in rows[1:] if not set(r) <= set("|-: ")]
            body.append("<table><thead><tr>")
            body.append("".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>")
            for r in rest:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>")
            body.append("</tbody></table>")
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and lines[i][0] not in "#|-":
                para.append(lines[i])
                i += 1
            if not para:  # a line starting with "-" that is not a list item
                para, i = [line], i + 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )

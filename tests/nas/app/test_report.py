"""The report's own pieces: the headline table and the Markdown -> HTML page."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from nas.app.report import _budget_section, budget_checks, headline_frame, markdown_to_html
from nas.compress import ReportRow


def _row(step: str, file: str, acc: float, ms: dict[str, float], **kw: object) -> ReportRow:
    return ReportRow(
        step=step,
        model="m",
        dtype="fp32",
        file=file,
        accuracy=acc,
        latency_ms=ms,
        **kw,  # type: ignore[arg-type]
    )


def test_headline_compares_start_and_fastest_artifact_on_the_same_device() -> None:
    rows = [
        _row("input", "", 0.74, {"ort-cpu-1t": 0.20}, macs=100),
        _row("export", "a.onnx", 0.76, {"ort-cpu-1t": 0.10}, macs=60, top1_agreement=1.0),
        _row("export", "b-int8.onnx", 0.75, {"ort-cpu-1t": 0.12}, macs=60),
        # faster, but on another device: must not be compared with the ort-cpu-1t start
        _row("export", "c.pte", 0.76, {"xnnpack-1t": 0.05}, macs=60),
    ]
    frame = headline_frame({"key": rows})
    assert len(frame) == 1
    line = frame.iloc[0]
    assert line["device"] == "ort-cpu-1t" and line["fastest artifact"].startswith("a.onnx")
    assert line["inherited top-1 %"] == pytest.approx(74.0)
    assert line["top-1 %"] == pytest.approx(76.0) and line["speed-up"] == pytest.approx(2.0)
    assert headline_frame({"key": rows[:1]}).empty  # nothing exported: no line


def test_markdown_to_html_keeps_escaped_pipes_inside_cells() -> None:
    page = markdown_to_html(
        ["# T", "", "| key | x |", "|---|---|", "| a=1\\|b=2 | **3** |", "", "- `item`"]
    )
    assert "<td>a=1|b=2</td><td><strong>3</strong></td>" in page
    assert "<li><code>item</code></li>" in page and "<h1>T</h1>" in page


class _Model:
    def __init__(self, device: str, dtype: str = "fp32") -> None:
        self.device, self.dtype = device, dtype


def _winners() -> pd.DataFrame:
    """The demo's case: both predicted within 0.35 ms, one over it priced whole."""
    return pd.DataFrame(
        {
            "arch_key": ["a", "b"],
            "val_accuracy": [80.0, 79.0],
            "test_accuracy": [79.5, 78.0],
            "macs": [2e6, 1e6],
            "params": [4e4, 3e4],
            "peak_bytes": [1e4, 1e4],
            "predicted_ms@pixel3-emulated-fp32": [0.348, 0.319],
            "measured_ms@pixel3-emulated-fp32": [0.388, 0.349],
        }
    )


def test_a_winner_over_its_budget_on_the_device_figure_is_flagged() -> None:
    models = {"pixel3-emulated-fp32": _Model("pixel3-emulated")}
    budgets = [("latency_ms@pixel3-emulated", "<=", 0.35), ("params", "<=", 35e3)]
    checks = budget_checks(_winners(), budgets, models)
    assert list(checks["kept"]) == [False, False, True, True]
    assert checks.iloc[0]["over %"] == pytest.approx(100 * (0.388 / 0.35 - 1))
    assert checks.iloc[0]["predicted"] == pytest.approx(0.348)
    # a metric no winner column prices is left out, not guessed
    assert budget_checks(_winners(), [("size_bytes", "<=", 1.0)], models).empty


def test_the_report_headline_says_a_budget_was_missed() -> None:
    state = SimpleNamespace(
        winners=_winners(),
        study=None,
        config=SimpleNamespace(
            search=SimpleNamespace(budgets={"latency_ms@pixel3-emulated": 0.35})
        ),
        latency_models={"pixel3-emulated-fp32": _Model("pixel3-emulated")},
    )
    text = "\n".join(_budget_section(state))
    assert "**Budget missed**: 1 of 2 winner(s)" in text
    assert "0.388" in text and "+10.9 %" in text and "predicted 0.348" in text
    state.winners = _winners().assign(**{"measured_ms@pixel3-emulated-fp32": [0.34, 0.30]})
    assert "All 2 winner(s) keep every budget" in "\n".join(_budget_section(state))

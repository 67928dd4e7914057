"""The report's own pieces: the headline table and the Markdown -> HTML page."""

from __future__ import annotations

import pytest

from nas.app.report import headline_frame, markdown_to_html
from nas.compress.chain import ReportRow


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

"""`nas hwtrain` end to end on small settings: its results, its plot, and a second run of the
same command that resumes (nothing retrained, the same result)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.app.cli import main


@pytest.mark.slow
def test_hwtrain_command_writes_its_results_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "hw"
    argv = [
        "hwtrain", "--space", "tiny", "--device", "pixel3-emulated",
        "--target", "pixel3-emulated=0.3", "--latency-model", "costmodel", "--epochs", "2",
        "--warmup-epochs", "1", "--max-steps", "2", "--batch-size", "16", "--mc", "100",
        "--term", "params", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "hwtrain.json").read_text())
    assert set(report["derived"]["priced"]) == {"pixel3-emulated", "params"}
    assert report["expectation_method"]["pixel3-emulated"] == "grouped (3 groups)"
    assert report["monte_carlo"]["pixel3-emulated"]["uniform"]["ratio"] <= 1.0
    assert 0.0 <= report["accuracy"]["derived"] <= 1.0
    assert report["device_ms"]["pixel3-emulated"] > 0
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert (out / "trajectory.png").stat().st_size > 0
    assert main(argv) == 0  # everything trained: resumes at the end, derives the same arch
    again = json.loads((out / "hwtrain.json").read_text())
    assert again["derived"]["key"] == report["derived"]["key"]
    assert again["history"] == report["history"]

"""The whole pipeline on a very small config: every stage runs, and a second run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nas.config import ConfigError
from nas.pipeline import demo_config, run_pipeline

SMALL = {
    "name": "small",
    "data": {"args": {"copies_train": 1, "copies_val": 1, "copies_test": 1}},
    "supernet": {"epochs": 1, "batch_size": 128},
    "accuracy": {"train_archs": 6, "predictor": "ridge"},
    "devices": [{"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 20}],
    "search": {
        "sampler": "random",
        "trials": 8,
        "budgets": {"latency_ms@pixel3-emulated": 1000.0},
    },
    "compress": {"top_k": 1, "steps": []},
}


@pytest.mark.slow
def test_small_run_end_to_end_and_resume(tmp_path: Path) -> None:
    config = demo_config(**SMALL)
    run_dir = tmp_path / "run"
    state = run_pipeline(config, run_dir, progress=False)
    for name in (
        "config.yaml",
        "report.md",
        "pareto.csv",
        "winners.csv",
        "trials.csv",
        "pareto_fronts.png",
        "study.db",
        "timings.json",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    winners = pd.read_csv(run_dir / "winners.csv")
    assert len(winners) == 1
    assert {"predicted_ms@pixel3-emulated-fp32", "measured_ms@pixel3-emulated-fp32"} <= set(
        winners.columns
    )
    report = (run_dir / "report.md").read_text()
    assert "Pareto fronts per device" in report and "Winners" in report
    n_trials = len(state.study.trials)

    again = run_pipeline(config, run_dir, progress=False)
    assert len(again.study.trials) == n_trials  # resumed: nothing redone, nothing lost
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["supernet"] < state.timings_s["supernet"]

    changed = demo_config(**{**SMALL, "seed": 1})
    with pytest.raises(ConfigError, match="different config"):
        run_pipeline(changed, run_dir, progress=False)

"""The whole pipeline on a very small config: every stage runs, and a second run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from nas.app.demo import demo_config
from nas.app.pipeline import plan, run_pipeline

ROOT = Path(__file__).resolve().parents[3]
SMALL: dict = {
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
    runs = json.loads((run_dir / "timings.json").read_text())["runs"]
    assert len(runs) == 2 and set(runs[0]["stages"]) == set(runs[1]["stages"])
    assert runs[1]["stages"]["supernet"] < runs[0]["stages"]["supernet"]  # skipped, not redone
    report = (run_dir / "report.md").read_text()
    assert "Summed over the 2 invocation(s)" in report and "| last invocation |" in report
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>") and '<img alt="Pareto fronts"' in page
    # arch keys hold "|": the winners table keeps its columns in Markdown and in HTML
    assert "\\|" in report and "<td>" + str(winners["arch_key"][0]) + "</td>" in page

    # a changed budget redoes the search and what reads it; the supernet and the rest are kept
    # (this refused a changed config before: the whole run had to start over)
    weights = {p: p.stat().st_mtime_ns for p in (run_dir / "supernet").iterdir()}
    budgets = {"latency_ms@pixel3-emulated": 500.0}
    changed = demo_config(**{**SMALL, "search": {**SMALL["search"], "budgets": budgets}})
    decisions = {d.stage: d for d in plan(changed, run_dir)}
    assert [decisions[s].action for s in ("supernet", "accuracy", "latency")] == ["keep"] * 3
    assert decisions["search"].action == "redo"
    assert "search.budgets changed" in decisions["search"].reason
    third = run_pipeline(changed, run_dir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "supernet").iterdir()} == weights
    stored = third.study.user_attrs["edge_nas"]["constraints"]
    assert stored == ["latency_ms@pixel3-emulated <= 500"]


def _complete_trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # no study yet (KeyError), or the other process is creating the database
        return []
    return study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])


@pytest.mark.slow
def test_nas_run_killed_mid_search_resumes_with_no_lost_trials(tmp_path: Path) -> None:
    trials = 40
    config = demo_config(
        **{**SMALL, "name": "killed", "search": {**SMALL["search"], "trials": trials}}
    )
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "nas", "-q", "run", str(path), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        done = _complete_trials(run_dir / "study.db", "killed")
        if len(done) >= 5:
            first.kill()  # SIGKILL: no handler runs, as when a machine dies
            break
        time.sleep(0.1)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-search"
    before = {t.number: t.values for t in _complete_trials(run_dir / "study.db", "killed")}
    assert 5 <= len(before) < trials

    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert {t.number: t.values for t in complete if t.number in before} == before, "lost trials"
    paid = [t.user_attrs["canonical_key"] for t in complete if t.user_attrs["evaluated"]]
    assert len(paid) == len(set(paid)) == trials, "budget reached, no arch paid twice"
    assert not study.get_trials(states=[optuna.trial.TrialState.RUNNING]), "stale trial left"
    assert (run_dir / "report.md").stat().st_size > 0
    assert len(json.loads((run_dir / "timings.json").read_text())["runs"]) == 2


def test_latency_stage_with_a_kernel_table_reports_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import search_spaces
    from latency_models import KernelSum
    from nas.app.config import DeviceConfig
    from nas.app.pipeline import RunState, stage_latency
    from nas.app.report import write_report

    monkeypatch.setenv("EDGE_NAS_CACHE", str(tmp_path / "cache"))
    device = {"name": "ort-cpu-1t", "latency_model": "kernels", "lut_archs": 2}
    # only the latency stage runs: the demo's budget on pixel3-emulated, a device this list
    # drops, would fail the whole-config check of demo_config, so the devices are set after it
    config = demo_config()
    config.devices = [DeviceConfig(**{**device, "calibration_archs": 2})]
    state = RunState(config, tmp_path, search_spaces.get_space("tiny"), data=None)
    stage_latency(state, progress=False)
    model = state.latency_models["ort-cpu-1t-fp32"]
    assert isinstance(model, KernelSum) and model.coef_ is not None  # fitted on 2 archs
    assert (tmp_path / "latency" / "ort-cpu-1t-fp32-kernels.csv").stat().st_size > 0
    quality = state.latency_quality["ort-cpu-1t-fp32"]
    assert quality["n_fit"] == quality["n_test"] == 2
    report = write_report(state).read_text()
    assert "KernelSum, table of" in report and "unique kernels" in report


def test_an_optional_stage_adds_its_section_to_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import search_spaces
    from nas.app import report
    from nas.app.pipeline import RunState

    monkeypatch.setattr(report, "STAGE_SECTIONS", {})
    report.register_report_section(
        "tune", lambda state: ["## Tuned", "", f"seed {state.config.seed}"]
    )
    state = RunState(demo_config(), tmp_path, search_spaces.get_space("tiny"), data=None)
    text = report.write_report(state).read_text()
    assert text.rstrip().endswith("## Tuned\n\nseed 0")
    assert "<h2>Tuned</h2>" in (tmp_path / "report.html").read_text()

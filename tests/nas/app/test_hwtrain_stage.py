"""The run's `hwtrain` stage: on a hand-built run state (an untrained supernet, the emulated
phone's cost model), its results, hand-off, report section and resume after a kill; its config
checks; and, slow, whole runs with it beside the search and then instead of it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

import nas.app.pipeline  # noqa: F401  (registers the stages)
from nas.app.config import config_from_dict
from nas.app.demo import demo_config
from nas.app.hwtrain_stage import report_section, stage_hwtrain
from nas.app.pipeline import RunState, plan, run_pipeline
from nas.app.run_checks import run_config_problems

TARGET = {"latency_ms@pixel3-emulated": 0.3}
HW: dict[str, Any] = {
    "enabled": True,
    "targets": TARGET,
    "epochs": 2,
    "max_steps": 2,
    "batch_size": 16,
    "mc": 50,
    "top_k": 2,
}
SMALL: dict[str, Any] = {
    "name": "small",
    "data": {"args": {"copies_train": 1, "copies_val": 1, "copies_test": 1}},
    "supernet": {"schedule": "spos", "epochs": 1, "batch_size": 128},
    "accuracy": {"train_archs": 6, "predictor": "ridge", "bn_batches": 1},
    "devices": [
        {"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 10, "calibration_archs": 0}
    ],
    "search": {
        "sampler": "random",
        "trials": 6,
        "budgets": {"latency_ms@pixel3-emulated": 1000.0},
        "margin": 0.0,
    },
    "compress": {"top_k": 1, "steps": ["distill"]},
    "hwtrain": HW,
}


def _state(tmp_path: Path, **hwtrain: Any) -> RunState:
    """A run state as the stages before hwtrain leave it, without their work: an untrained
    supernet, the validation evaluator, and the emulated phone priced by its cost model."""
    import latency_models as lm
    import search_spaces
    from nas.data import load_dataset
    from nas.supernet import SubnetEvaluator

    config = demo_config(**{**SMALL, "hwtrain": {**HW, **hwtrain}})
    space = search_spaces.get_space("tiny")
    data = load_dataset("digits", copies_train=1, copies_val=1, copies_test=1)
    state = RunState(config, tmp_path, space, data)
    state.supernet = space.supernet().eval()
    state.evaluator = SubnetEvaluator(state.supernet, data.train, data.val, calib_images=128)
    device = lm.get_device("pixel3-emulated")
    model = lm.create_latency_model("costmodel", space, device, dtype="fp32")
    model.device, model.dtype = "pixel3-emulated", "fp32"
    state.devices["pixel3-emulated-fp32"] = device
    state.latency_models["pixel3-emulated-fp32"] = model
    (tmp_path / "latency").mkdir()  # the device figures' cache, as the latency stage leaves it
    return state


@pytest.mark.slow
def test_the_stage_derives_hands_on_reports_and_resumes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.hwtrain.train as engine

    state = _state(tmp_path)
    save = engine._save

    def killed_after_the_first_epoch(run: Any, out: Path, epochs_done: int) -> None:
        save(run, out, epochs_done)
        raise KeyboardInterrupt  # as a kill right after the checkpoint

    monkeypatch.setattr(engine, "_save", killed_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        stage_hwtrain(state, False)
    assert not (tmp_path / "hwtrain" / "hwtrain.json").exists()
    monkeypatch.setattr(engine, "_save", save)
    stage_hwtrain(state, False)  # the next run resumes from the first epoch's checkpoint

    report = json.loads((tmp_path / "hwtrain" / "hwtrain.json").read_text())
    assert report["resumed_from_epoch"] == 1
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["targets"] == TARGET and report["aims"] == TARGET  # search.margin 0.0: no margin
    priced = report["derived"]["priced"]["latency_ms@pixel3-emulated"]
    assert report["device_ms"]["latency_ms@pixel3-emulated"] == pytest.approx(priced)
    assert (tmp_path / "hwtrain" / "trajectory.png").stat().st_size > 0

    handed = state.more_winners["hwtrain"]
    assert handed["arch_key"].iloc[0] == report["derived"]["key"] and len(handed) == 2
    assert set(handed["source"]) == {"hwtrain"}
    assert {"val_accuracy", "test_accuracy", "measured_ms@pixel3-emulated-fp32"} <= set(handed)
    assert pd.read_csv(tmp_path / "hwtrain" / "winners.csv")["arch_key"].tolist() == list(
        handed["arch_key"]
    )
    text = "\n".join(report_section(state))
    assert "## Hardware-aware training" in text and "beside the search" in text
    assert "| latency_ms@pixel3-emulated | 0.3 |" in text
    assert "![Logit trajectory](hwtrain/trajectory.png)" in text
    assert "Against the search" not in text  # no study to compare with

    # a budget the derived arch (about 0.3 ms) breaks sets it aside: finished, the stage only
    # hands its archs on again
    state.config.search.budgets = {"latency_ms@pixel3-emulated": 0.2}
    stage_hwtrain(state, False)
    outcome = state.extra["hwtrain"]
    assert outcome.report == report
    assert report["derived"]["key"] in {r.arch_key for r in outcome.rejected}
    assert all(outcome.winners["measured_ms@pixel3-emulated-fp32"] <= 0.2)
    rejected = pd.read_csv(tmp_path / "hwtrain" / "rejected.csv")
    assert report["derived"]["key"] in set(rejected["arch_key"])
    assert "was set aside" in "\n".join(report_section(state))


def test_the_report_has_no_section_when_the_stage_did_not_run(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert report_section(state) == []


def test_without_the_search_hwtrain_feeds_the_compression_chain(tmp_path: Path) -> None:
    config = demo_config(**{**SMALL, "search": {**SMALL["search"], "enabled": False}})
    decisions = {d.stage: str(d) for d in plan(config, tmp_path)}
    assert decisions["search"] == "search: off: set search.enabled: true to run it"
    assert decisions["winners"] == "winners: off: it follows search, which is off"
    assert decisions["hwtrain"] == "hwtrain: run" and decisions["compress"] == "compress: run"
    decisions = {d.stage: str(d) for d in plan(demo_config(**SMALL), tmp_path)}
    assert decisions["search"] == "search: run" and decisions["hwtrain"] == "hwtrain: run"
    off = demo_config(**{**SMALL, "hwtrain": {**HW, "enabled": False}})
    assert str(plan(off, tmp_path)[list(decisions).index("hwtrain")]) == (
        "hwtrain: off: set hwtrain.enabled: true to run it"
    )


def test_the_compress_stage_chains_both_winner_sets_each_arch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.compress
    import search_spaces
    from nas.app.compress_stage import stage_compress

    chained: list[str] = []

    def run_chain(run_dir: Path, arch: Any, **kwargs: Any) -> Any:
        chained.append(kwargs["space"].key(arch))
        return SimpleNamespace(rows=[])

    monkeypatch.setattr(nas.compress, "run_chain", run_chain)
    monkeypatch.setattr(nas.compress, "render_report", lambda rows: "")
    space = search_spaces.get_space("tiny")
    a, b, c = (space.key(space.sample(i)) for i in (1, 2, 3))
    state = RunState(demo_config(**{**SMALL, "hwtrain": {}}), tmp_path, space, None)
    state.supernet = SimpleNamespace(export=None)
    state.winners = pd.DataFrame({"arch_key": [a, b]})
    state.more_winners["hwtrain"] = pd.DataFrame({"arch_key": [b, c]})
    stage_compress(state, False)
    assert chained == [a, b, c] and set(state.compress_tables) == {a, b, c}
    chained.clear()
    state.winners = None  # the search off: hwtrain's archs alone
    stage_compress(state, False)
    assert chained == [b, c]


def _problems(**change: Any) -> list[str]:
    base = {k: v for k, v in SMALL.items() if k != "hwtrain"}
    config = config_from_dict({**base, "hwtrain": {**HW, "enabled": False}})
    for section, values in change.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return run_config_problems(config)


def test_the_config_checks_its_hwtrain_section_before_any_work() -> None:
    assert _problems(hwtrain={"enabled": True}) == []
    bad_device = _problems(hwtrain={"enabled": True, "targets": {"latency_ms@pixel9": 0.3}})
    assert len(bad_device) == 1 and bad_device[0].startswith("hwtrain.targets.latency_ms@pixel9")
    assert "latency_ms@pixel3-emulated" in bad_device[0]  # the run's devices, named
    outside = _problems(hwtrain={"enabled": True, "targets": {"latency_ms@pixel3-emulated": 9.0}})
    assert len(outside) == 1 and "outside the space's latency range" in outside[0]
    assert " to " in outside[0]  # the range, said
    assert _problems(hwtrain={"enabled": True, "targets": {}})[0].startswith("hwtrain.targets")
    assert _problems(hwtrain={"enabled": True, "relaxation": "darts"})[0].startswith(
        "hwtrain.relaxation"
    )
    assert _problems(hwtrain={"enabled": True, "margin": 2})[0].startswith("hwtrain.margin")
    rule = _problems(hwtrain={"enabled": True, "weight_rule": "largest"})
    assert rule[0].startswith("hwtrain.weight_rule") and "sandwich" in rule[0]
    assert _problems(hwtrain={"enabled": True, "epochs": 1, "warmup_epochs": 1})[0].startswith(
        "hwtrain"
    )
    assert _problems(search={"enabled": False})[0].startswith("search.enabled")
    assert _problems(hwtrain={"relaxation": "darts"}) == []  # off: not checked


def test_a_space_that_cannot_be_relaxed_is_named_up_front() -> None:
    from tests.nas.hwtrain.toy import DeadDimSpace

    config = config_from_dict({**SMALL, "hwtrain": {**HW, "targets": {}, "loss": "additive"}})
    problems = run_config_problems(config, space=DeadDimSpace(), data_given=True)
    assert len(problems) == 1 and problems[0].startswith("space.name")
    assert "['dead']" in problems[0]


@pytest.mark.slow
def test_a_run_with_hwtrain_beside_the_search_then_instead_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.compress

    chained: list[str] = []

    def run_chain(run_dir: Path, arch: Any, **kwargs: Any) -> Any:
        chained.append(kwargs["space"].key(arch))
        return SimpleNamespace(rows=[])

    monkeypatch.setattr(nas.compress, "run_chain", run_chain)
    monkeypatch.setattr(nas.compress, "render_report", lambda rows: "")
    run_dir = tmp_path / "run"
    config = demo_config(**{**SMALL, "hwtrain": {**HW, "epochs": 1}})
    state = run_pipeline(config, run_dir, progress=False)
    search_wins = list(state.winners["arch_key"])
    hw_wins = list(state.more_winners["hwtrain"]["arch_key"])
    assert chained == list(dict.fromkeys(search_wins + hw_wins))  # both sets, each arch once
    report = (run_dir / "report.md").read_text()
    assert "beside the search" in report and "Against the search at equal latency" in report
    timings = json.loads((run_dir / "timings.json").read_text())["runs"][0]["stages"]
    assert {"search", "hwtrain", "winners"} <= set(timings)

    chained.clear()
    instead = demo_config(
        **{**SMALL, "hwtrain": {**HW, "epochs": 1}, "search": {**SMALL["search"], "enabled": False}}
    )
    decisions = {d.stage: d.action for d in plan(instead, run_dir)}
    assert decisions["search"] == decisions["winners"] == "off"
    assert decisions["hwtrain"] == "keep"  # its inputs did not change: not trained again
    state = run_pipeline(instead, run_dir, progress=False)
    assert state.winners is None and chained == hw_wins
    assert (run_dir / "study.db").exists()  # off: what the search left stays
    report = (run_dir / "report.md").read_text()
    assert "instead of the search" in report and "Against the search" not in report


def test_the_stage_takes_its_weight_rule_and_folders_before_the_key_keep_it() -> None:
    from nas.app.config import HwtrainConfig
    from nas.app.hwtrain_stage import train_config
    from nas.app.stages import STAGES, fingerprint

    assert train_config(HwtrainConfig(), 0).weight_rule == "path"
    assert train_config(HwtrainConfig(weight_rule="sandwich"), 0).weight_rule == "sandwich"
    stage = STAGES["hwtrain"]
    on = {"enabled": True, "targets": {"latency_ms@pixel3-emulated": 0.3}}
    before = demo_config(hwtrain=on).to_dict()
    del before["hwtrain"]["weight_rule"]
    assert fingerprint(stage, demo_config(hwtrain=on).to_dict()) == fingerprint(stage, before)
    changed = demo_config(hwtrain={**on, "weight_rule": "sandwich"}).to_dict()
    assert fingerprint(stage, changed) != fingerprint(stage, before)

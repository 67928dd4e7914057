"""Budgets kept on the device: the latency stage's held-out check, the margins, and winners
re-checked on the device's own figure (one planted over budget and replaced)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

import latency_models as lm
from nas.app import builtin_stages
from nas.app.budgets import HeldOut, budget_margins, check_archs
from nas.app.builtin_stages import RunState, stage_latency, stage_winners
from nas.app.config import DeviceConfig
from nas.app.demo import demo_config
from nas.app.report import write_report
from nas.search import run_search
from search_spaces import TinySpace

SPACE = TinySpace()
LABEL = "pixel3-emulated-fp32"
METRIC = "latency_ms@pixel3-emulated"


def test_an_emulated_device_is_checked_on_held_out_archs_by_default(tmp_path: Path) -> None:
    config = demo_config(search={"budgets": {}})
    config.devices = [DeviceConfig(name="pixel3-emulated", lut_archs=10)]
    state = RunState(config, tmp_path, SPACE, data=None)
    stage_latency(state, progress=False)
    quality = state.latency_quality[LABEL]
    assert quality["n_fit"] == quality["n_test"] == 50  # priced whole: free
    # the LUT sum carries the profile's per-network cost: it prices whole networks exactly
    assert quality["model"] == "plain" and quality["lut_mape_pct"] < 1e-6
    assert quality["ratio_p95"] == pytest.approx(1.0)
    held = state.heldout[LABEL]
    margins = budget_margins({METRIC: 0.3}, state.heldout, {LABEL: METRIC}, "auto")
    assert margins[METRIC].method == "conformal" and margins[METRIC].value < 1e-9
    assert len(held.measured_ms) == 50 and (tmp_path / "latency" / f"{LABEL}-heldout.json").exists()


def test_margins_auto_fixed_and_without_held_out_archs() -> None:
    held = {LABEL: HeldOut([1.1, 1.0, 1.2], [1.0, 1.0, 1.0], "plain")}
    auto = budget_margins({METRIC: 1.0, "params": 9.0}, held, {LABEL: METRIC}, "auto")
    assert set(auto) == {METRIC}  # exact metrics keep no margin
    assert auto[METRIC].method == "largest" and auto[METRIC].value == pytest.approx(0.2)
    fixed = budget_margins({METRIC: 1.0}, held, {LABEL: METRIC}, 0.1)
    assert fixed[METRIC].method == "fixed" and fixed[METRIC].value == 0.1
    assert budget_margins({METRIC: 1.0}, {}, {LABEL: METRIC}, "auto")[METRIC].method == "none"
    assert check_archs(None, SimpleNamespace(kind="emulated")) == 50
    assert check_archs(None, SimpleNamespace(kind="real")) == 10
    assert check_archs(7, SimpleNamespace(kind="real")) == 7


class _Planted:
    """The phone, except that the archs in `over` run at `factor` x the budget on it."""

    kind = "emulated"

    def __init__(self, phone: Any, over: set[str], bound: float, factor: float = 1.1) -> None:
        self.phone, self.over, self.bound, self.factor = phone, over, bound, factor

    def measure_arch(self, space: Any, arch: Any, dtype: str = "fp32") -> Any:
        if space.key(arch) in self.over:
            return SimpleNamespace(latency_ms=self.bound * self.factor)
        return self.phone.measure_arch(space, arch, dtype)


def _searched(tmp_path: Path) -> tuple[RunState, float]:
    phone = lm.get_device("pixel3-emulated")
    lut = lm.build_lut(SPACE, phone, None, n_archs=10, seed=0)
    model = lm.LUTSum(lut, phone, on_missing="measure")
    rng = np.random.default_rng(0)
    bound = float(np.median(model.predict_many(SPACE, [SPACE.sample(rng) for _ in range(40)])))
    study = run_search(
        SPACE,
        ["accuracy", model],
        accuracy=lambda arch: float(SPACE.cost(arch).macs) / 1e4,  # bigger is better here
        constraints={METRIC: bound},
        sampler="random",
        n_evaluations=16,
        seed=0,
    )
    config = demo_config(search={"budgets": {METRIC: bound}}, compress={"top_k": 2})
    state = RunState(config, tmp_path, SPACE, data=None, study=study)
    state.latency_models[LABEL] = model
    (tmp_path / "latency").mkdir()
    return state, bound


def _ranked(state: RunState) -> list[str]:
    from nas.search import trials_frame

    trials = trials_frame(state.study)
    feasible = trials[trials["feasible"]].sort_values("accuracy", ascending=False)
    return list(feasible.drop_duplicates("arch_key")["arch_key"])


def test_a_winner_over_budget_on_the_device_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_stages, "_test_accuracy", lambda state, arch: 50.0)
    state, bound = _searched(tmp_path)
    ranked = _ranked(state)
    assert len(ranked) >= 3
    planted = ranked[0]
    state.devices[LABEL] = _Planted(lm.get_device("pixel3-emulated"), {planted}, bound)
    stage_winners(state, progress=False)
    winners = pd.read_csv(tmp_path / "winners.csv")
    assert list(winners["arch_key"]) == ranked[1:3]  # the planted one replaced by the next
    assert (winners[f"measured_ms@{LABEL}"] <= bound).all()
    rejected = pd.read_csv(tmp_path / "rejected.csv")
    assert list(rejected["arch_key"]) == [planted]
    assert rejected.iloc[0]["replaced_by"] == ranked[1]
    assert rejected.iloc[0]["device_ms"] == pytest.approx(1.1 * bound)
    report = write_report(state).read_text()
    assert "## Headline: budgets on each device" in report
    assert "All 2 winner(s) keep every budget" in report
    assert "1 arch(s) the search ranked as winners were over a budget" in report


def test_when_nothing_keeps_the_budget_the_headline_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_stages, "_test_accuracy", lambda state, arch: 50.0)
    state, bound = _searched(tmp_path)
    every = {str(t.user_attrs["arch_key"]) for t in state.study.trials}
    state.devices[LABEL] = _Planted(lm.get_device("pixel3-emulated"), every, bound, 1.5)
    stage_winners(state, progress=False)
    assert state.winners is not None and state.winners.empty
    (miss,) = state.misses
    assert miss.device_ms == pytest.approx(1.5 * bound) and miss.arch_key in every
    report = write_report(state).read_text()
    assert "no arch in the study keeps" in report and miss.arch_key in report


def test_nas_search_keeps_a_given_margin_and_stores_it(tmp_path: Path) -> None:
    from nas.app.cli import main
    from nas.search import sqlite_url, study_settings

    out = tmp_path / "s"
    argv = "search --device pixel3-emulated --objectives latency,params --trials 4"
    args = [*argv.split(), "--lut-archs", "2", "--budget", f"{METRIC}<=0.3", "--margin", "0.2"]
    assert main(["-q", *args, "--out", str(out)]) == 0
    assert study_settings(sqlite_url(out / "study.db"))["margins"] == {METRIC: 0.2}
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["feasible"]) == list(trials[METRIC] * 1.2 <= 0.3)


def test_the_correction_is_used_only_where_it_pays_on_held_out_archs() -> None:
    from nas.app.budgets import heldout_quality

    measured = np.array([1.0, 2.0, 3.0, 4.0])
    off = measured * 0.8  # the plain sum misses 20 %
    close = measured * np.array([1.01, 0.99, 1.02, 0.98])
    quality, held = heldout_quality(off, close, measured, 4, self_fitted=False)
    assert held.model == "corrected" and held.predicted_ms == close.tolist()
    assert quality["ratio_p95"] == pytest.approx(np.quantile(measured / close, 0.95))
    quality, held = heldout_quality(close, off, measured, 4, self_fitted=False)
    assert held.model == "plain" and quality["mape_pct"] < 2
    _, held = heldout_quality(close, off, measured, 4, self_fitted=True)
    assert held.model == "corrected"  # a kernel table's line is the model itself
    # a degenerate cell priced at 0 ms is left out of the margin's ratios
    quality, held = heldout_quality(
        np.r_[0.0, close], np.r_[0.0, off], np.r_[0.1, measured], 4, False
    )
    assert len(held.measured_ms) == 4 and quality["n_unpriced"] == 1

"""Budget margins: the conformal quantile, the constraint that keeps a margin, and a study that
stores it so a joining worker applies the same."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nas.search import (
    MIN_CONFORMAL_ARCHS,
    Constraint,
    SearchProblem,
    auto_margin,
    join_worker,
    run_search,
    study_settings,
)
from search_spaces import TinySpace

SPACE = TinySpace()


def test_conformal_margin_is_the_ceil_n_plus_1_quantile() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.uniform(1.0, 2.0, 40)
    excess = np.arange(40) / 400.0  # 0 .. 0.0975, shuffled below
    rng.shuffle(excess)
    measured = predicted * (1 + excess)
    margin = auto_margin(measured, predicted)
    k = math.ceil(41 * 0.95)  # the 39th smallest of 40
    assert margin.method == "conformal" and margin.n_heldout == 40
    assert margin.value == pytest.approx(np.sort(excess)[k - 1])
    assert "conformal 95 %" in margin.describe() and "40 held-out" in margin.describe()
    # with it, every held-out arch but the largest one is covered
    assert np.mean(measured <= predicted * (1 + margin.value) + 1e-12) >= 0.95


def test_few_archs_use_the_largest_ratio_and_say_so() -> None:
    predicted = np.ones(MIN_CONFORMAL_ARCHS - 1)
    measured = predicted.copy()
    measured[3] = 1.2
    margin = auto_margin(measured, predicted)
    assert margin.method == "largest" and margin.value == pytest.approx(0.2)
    assert "fewer than the 30" in margin.describe()
    assert auto_margin([], []).method == "none" and auto_margin([], []).value == 0.0


def test_a_model_that_overestimates_needs_no_margin() -> None:
    margin = auto_margin(np.full(50, 0.9), np.ones(50))
    assert margin.value == 0.0 and margin.method == "conformal"


def test_bad_inputs_of_a_margin() -> None:
    with pytest.raises(ValueError, match="one prediction per measurement"):
        auto_margin([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="predictions > 0"):
        auto_margin([1.0], [0.0])
    with pytest.raises(ValueError, match=">= 0"):
        Constraint("latency_ms@x", "<=", 1.0, margin=-0.1)
    with pytest.raises(ValueError, match="'<=' budgets only"):
        Constraint("accuracy", ">=", 50.0, margin=0.1)


def test_a_constraint_with_a_margin_needs_room() -> None:
    c = Constraint("latency_ms@x", "<=", 1.0, margin=0.1)
    assert c.violation(0.9) == pytest.approx(-0.01)  # 0.99 <= 1: feasible
    assert c.violation(0.95) > 0  # 1.045 > 1: infeasible although under the bound
    assert c.effective_bound == pytest.approx(1 / 1.1)
    assert str(c) == "latency_ms@x <= 1"  # the text a study stores is unchanged


class _Latency:
    device, dtype = "phone", "fp32"

    def predict_arch(self, space: object, arch: dict) -> float:
        return float(SPACE.cost(arch).macs) / 1e6

    def predict_many(self, space: object, archs: list) -> np.ndarray:
        return np.array([self.predict_arch(space, a) for a in archs])


def test_margins_reach_the_problem_and_are_checked() -> None:
    model = _Latency()
    problem = SearchProblem(
        SPACE, ["macs", model], constraints={"latency_ms@phone": 2.0}, margins={"latency_ms": 0.2}
    )
    assert problem.constraints[0].margin == pytest.approx(0.2)
    assert problem.describe()["margins"] == {"latency_ms@phone": 0.2}
    assert "margins" not in SearchProblem(SPACE, ["macs"]).describe()
    with pytest.raises(ValueError, match="carry no '<=' budget"):
        SearchProblem(SPACE, ["macs", model], margins={"macs": 0.1})
    ok = problem.feasible_cheap({"latency_ms@phone": np.array([1.6, 1.7, 2.0])})
    assert list(ok) == [True, False, False]  # 1.6 x 1.2 = 1.92; 1.7 x 1.2 = 2.04


def test_a_joining_worker_applies_the_margin_stored_with_the_study(tmp_path: Path) -> None:
    model = _Latency()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(
        SPACE,
        ["macs", model],
        constraints={"latency_ms@phone": 3.0},
        margins={"latency_ms@phone": 0.25},
        sampler="random",
        n_evaluations=6,
        storage=storage,
        study_name="m",
    )
    assert study_settings(storage, "m")["margins"] == {"latency_ms@phone": 0.25}
    joined = join_worker(
        SPACE,
        storage,
        "m",
        ["macs", model],
        constraints={"latency_ms@phone": 3.0},
        n_evaluations=10,
        seed=1,
    )
    for t in joined.trials:
        latency = t.user_attrs["metrics"]["latency_ms@phone"]
        (violation,) = t.constraints.values()
        assert violation == pytest.approx(latency * 1.25 - 3.0)  # the stored margin, applied
    with pytest.raises(ValueError, match="margins"):
        join_worker(
            SPACE,
            storage,
            "m",
            ["macs", model],
            constraints={"latency_ms@phone": 3.0},
            margins={"latency_ms@phone": 0.1},
        )

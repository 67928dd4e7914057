"""Training memory under a fixed update plan as a search objective and budget
(`train_memory_bytes@MODE[:bBATCH]`, issue 20 item 6)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.app.train_memory import parse_train_memory, train_memory_metric, train_memory_metrics
from nas.ondevice import make_plan, training_memory
from nas.search import SearchProblem, pareto_frame, run_search, trials_frame
from search_spaces import get_space


def _recompute(space, key: str, mode: str, batch: int, blocks_k: int = 1) -> int:
    """The memory model's figure for one arch, priced from scratch (no cache)."""
    arch = space.from_key(key)
    with torch.device("meta"):
        plan = make_plan(space.build(arch), mode, blocks_k=blocks_k)
    return training_memory(
        lambda: space.build(arch), space.input_shape(arch), plan, batch=batch, num_classes=10
    ).total_bytes


def test_names_parse_and_bad_ones_list_the_modes() -> None:
    assert parse_train_memory("train_memory_bytes@bias").batch == 8
    spec = parse_train_memory("train_memory_bytes@last2:b1")
    assert (spec.mode, spec.blocks_k, spec.batch) == ("last", 2, 1)
    assert spec.name == "train_memory_bytes@last2:b1"
    assert parse_train_memory("train_memory_bytes@bn_bias:b8").name == "train_memory_bytes@bn_bias"
    for bad in ("bais", "sparse", "last", "bias3", "bias:8", "bias:b0", "last0"):
        with pytest.raises(ValueError, match="bn_bias") as err:
            parse_train_memory(f"train_memory_bytes@{bad}")
        assert "train_memory_bytes@lastK" in str(err.value) or "blocks" in str(err.value)


def test_a_budgeted_search_keeps_only_archs_under_it() -> None:
    space = get_space("tiny")
    name = "train_memory_bytes@bias:b1"
    metric = train_memory_metric(space, name)
    archs = [space.sample(rng=i) for i in range(12)]
    start = time.perf_counter()
    values = metric.many(archs)
    per_arch = (time.perf_counter() - start) / len(archs)
    assert per_arch < 1.0, f"{per_arch:.2f} s per arch: too slow for a study of hundreds"
    bound = float(sorted(values)[len(values) // 2])  # about half of the archs fit
    constraints = [f"{name} <= {bound:g}"]
    study = run_search(
        space,
        ["params", name],
        constraints=constraints,
        sampler="random",
        n_evaluations=12,
        metrics=train_memory_metrics(space, ["params", name], constraints),
    )
    frame = trials_frame(study)
    recomputed = [_recompute(space, k, "bias", batch=1) for k in frame["arch_key"]]
    assert list(frame[name]) == recomputed
    assert list(frame["feasible"]) == [v <= bound for v in recomputed]
    assert 0 < frame["feasible"].sum() < len(frame)  # the budget bit
    front = pareto_frame(study)
    assert len(front) and all(front[name] <= bound)


def test_problem_rejects_a_name_it_was_not_given() -> None:
    space = get_space("tiny")
    with pytest.raises(ValueError, match="pass metrics="):
        SearchProblem(space, ["train_memory_bytes@bias"])
    metric = train_memory_metric(space, "train_memory_bytes@full")
    with pytest.raises(ValueError, match="already defined"):
        SearchProblem(space, ["params"], metrics=[metric, metric])


def test_search_command_budget_and_bad_names(tmp_path: Path, capsys) -> None:
    from nas.app.cli import main

    out = tmp_path / "s"
    argv = ["search", "--space", "tiny", "--objectives", "params,train_memory_bytes@last1:b1"]
    argv += ["--budget", "train_memory_bytes@bias:b1 <= 600000", "--sampler", "random"]
    argv += ["--trials", "4", "--out", str(out)]
    assert main(argv) == 0
    trials = pd.read_csv(out / "trials.csv")
    space = get_space("tiny")
    ok = trials[trials["feasible"]]
    for key in ok["arch_key"]:
        assert _recompute(space, key, "bias", batch=1) <= 600000
    assert "train_memory_bytes@last1:b1" in trials.columns

    bad = ["search", "--space", "tiny", "--objectives", "params,train_memory_bytes@bais"]
    bad += ["--budget", "train_memory_bytes@sparse <= 1e6", "--out", str(tmp_path / "b")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "--objectives: unknown training-memory metric 'train_memory_bytes@bais'" in err
    assert "train_memory_bytes@sparse" in err and "bn_bias" in err
    assert "pass metrics" not in err  # one clear error per bad name


def test_run_config_budget_reaches_the_search_and_the_report(tmp_path: Path) -> None:
    """A run config's `search.budgets` on training memory: the search stage prices it, the
    winners carry it, and the report's budget table checks it (exact, like MACs)."""
    from nas.app.builtin_stages import RunState, stage_search
    from nas.app.config import config_from_dict
    from nas.app.report import budget_checks

    name = "train_memory_bytes@bias:b1"
    search = {"sampler": "random", "trials": 6, "objectives": ["accuracy", "params"]}
    config = config_from_dict(
        {"name": "t", "devices": [], "search": {**search, "budgets": {name: 700000.0}}}
    )
    space = get_space("tiny")

    class Evaluator:
        def evaluate_one(self, arch) -> float:
            return space.cost(arch).params / 1e6  # any number: the search pays for it

    state = RunState(config, tmp_path, space, None, evaluator=Evaluator())
    stage_search(state, progress=False)
    frame = trials_frame(state.study)
    for key, value, ok in zip(frame["arch_key"], frame[name], frame["feasible"], strict=True):
        assert value == _recompute(space, key, "bias", batch=1)
        assert ok == (value <= 700000)
    winners = frame[frame["feasible"]].head(2)[["arch_key", name]]
    checks = budget_checks(winners, [(name, "<=", 700000.0)], {})
    assert len(checks) == len(winners) and checks["kept"].all()

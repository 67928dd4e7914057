"""Studies of a search: create, run, join and resume them; evaluate one trial; keep the books
of paid accuracies.

Every trial records its arch key, canonical key and all metric values (`user_attrs`). An arch
whose canonical key was already paid for is not evaluated again: its accuracy is reused and the
trial says `reused_from`. A paid accuracy is written to the trial *before* the trial completes,
so a killed worker loses no evaluation; `run_search` on an existing storage resumes, and
`join_worker` adds a process to a running study.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas.core.protocols import LatencyModel
from nas.core.space import Arch, SearchSpace
from nas.search.constraints import Constraint
from nas.search.objectives import ACCURACY, Metric, SearchProblem
from nas.search.samplers import make_sampler
from nas.search.storage import open_storage

log = logging.getLogger(__name__)

COST_OBJECTIVES = ("macs", "params", "peak_activation_bytes")
CONFIG_ATTR = "edge_nas"  # study user attr holding the problem's description and the budget

__all__ = [
    "CONFIG_ATTR",
    "COST_OBJECTIVES",
    "count_evaluations",
    "create_search",
    "join_worker",
    "paid_accuracies",
    "price_study",
    "run_search",
    "study_settings",
]


# -- evaluating one trial --------------------------------------------------------------------
def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _paid(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get("evaluated")) and "accuracy" in t.user_attrs


def paid_accuracies(study: optuna.Study) -> dict[str, tuple[float, int]]:
    """Canonical key -> (accuracy, trial number) of every accuracy paid for in `study`, in
    any trial state (a paid accuracy is recorded before its trial completes)."""
    out: dict[str, tuple[float, int]] = {}
    for t in study.get_trials(deepcopy=False):
        if _paid(t):
            ck = str(t.user_attrs["canonical_key"])
            out.setdefault(ck, (float(t.user_attrs["accuracy"]), t.number))
    return out


def count_evaluations(study: optuna.Study) -> int:
    """Distinct archs (canonical keys) whose accuracy was paid for; without an accuracy
    metric, the number of complete trials."""
    cfg = study.user_attrs.get(CONFIG_ATTR, {})
    if cfg and not cfg.get("paid_accuracy", True):
        return len(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]))
    return len(paid_accuracies(study))


def _first_heartbeat(trial: optuna.Trial) -> None:
    """Record a heartbeat now, before any paid work. Optuna's heartbeat thread may not have
    written its first beat when a worker dies, and a trial with no beat is never failed as
    stale, so it would stay RUNNING forever."""
    storage = getattr(trial, "storage", None)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if storage is not None and interval is not None:
        storage.record_heartbeat(trial._trial_id)


class _Objective:
    """Evaluates one trial: cheap metrics, budgets, then accuracy unless already paid."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self.worker = _worker_id()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        p = self.problem
        _first_heartbeat(trial)
        arch = p.space.suggest(trial)
        ck = p.space.canonical_key(arch)
        trial.set_user_attr("arch_key", p.space.key(arch))
        trial.set_user_attr("canonical_key", ck)
        trial.set_user_attr("worker", self.worker)
        cheap = p.cheap_used
        row = p.cheap_matrix([arch], cheap)[0] if cheap else np.zeros(0)
        values: dict[str, float] = {n: float(v) for n, v in zip(cheap, row, strict=True)}
        if ACCURACY in p.used_metrics:
            paid = paid_accuracies(trial.study)
            recovered = trial.user_attrs.get("recovered_from")
            if ck in paid and paid[ck][1] == recovered:
                # completing an evaluation a killed worker paid for: found, not re-paid
                acc = paid[ck][0]
                trial.set_user_attr("evaluated", True)
            elif ck in paid:
                acc, number = paid[ck]
                trial.set_user_attr("reused_from", number)
                trial.set_user_attr("evaluated", False)
            else:
                assert p.accuracy_fn is not None
                acc = float(p.accuracy_fn(arch))
                if not np.isfinite(acc):
                    raise ValueError(f"the accuracy source returned {acc} for {p.space.key(arch)}")
                trial.set_user_attr("evaluated", True)
            trial.set_user_attr("accuracy", acc)  # recorded before completion: never lost
            values[ACCURACY] = acc
        trial.set_user_attr("metrics", values)
        for c in p.constraints:
            trial.set_constraint(str(c), c.violation(values[c.metric]))
        return tuple(values[m] for m in p.objectives)


# -- running a search ------------------------------------------------------------------------
def _study_config(
    problem: SearchProblem, n_evaluations: int, sampler: str, recipe: Mapping[str, Any] | None
) -> dict[str, Any]:
    config = {
        **problem.describe(),
        "n_evaluations": n_evaluations,
        "sampler": sampler,
        "paid_accuracy": ACCURACY in problem.used_metrics,
    }
    if recipe is not None:
        config["recipe"] = dict(recipe)
    return config


def _check_same_problem(study: optuna.Study, problem: SearchProblem) -> None:
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return
    mine = problem.describe()
    diff = {k: (stored.get(k), v) for k, v in mine.items() if stored.get(k) != v}
    if diff:
        detail = "; ".join(f"{k}: study has {a!r}, this worker {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"study {study.study_name!r} was created for another problem ({detail}); pass the "
            "same space, objectives and budgets, or another study_name"
        )


def _recover_paid(study: optuna.Study) -> int:
    """Re-queue archs paid for in trials that never completed (a killed worker), so they
    complete from the recorded accuracy without being evaluated again."""
    done = {
        str(t.user_attrs.get("canonical_key"))
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.WAITING])
    }
    queued = {
        str(t.user_attrs.get("canonical_key"))
        for t in study.get_trials(deepcopy=False, states=[TrialState.WAITING])
    }
    n = 0
    for t in study.get_trials(deepcopy=False, states=[TrialState.FAIL]):
        ck = str(t.user_attrs.get("canonical_key"))
        if _paid(t) and ck not in done and ck not in queued:
            study.enqueue_trial(dict(t.params), user_attrs={"recovered_from": t.number})
            queued.add(ck)
            n += 1
    if n:
        log.info("re-queued %d paid archs from trials that did not complete", n)
    return n


def _optimize(
    study: optuna.Study,
    problem: SearchProblem,
    n_evaluations: int,
    max_trials: int,
    timeout_s: float | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> None:
    paid_metric = ACCURACY in problem.used_metrics
    objective = _Objective(problem)
    state = {"last_logged": -1}

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        n = count_evaluations(study)
        if n >= n_evaluations:
            study.stop()
        if n // 25 != state["last_logged"] // 25:
            state["last_logged"] = n
            log.info("%s: %d / %d evaluations", study.study_name, n, n_evaluations)

    done = count_evaluations(study)
    trials_so_far = len(study.get_trials(deepcopy=False))
    budget = max_trials - trials_so_far
    if done >= n_evaluations:
        log.info("study %r already has %d evaluations", study.study_name, done)
        return
    if budget <= 0:
        log.warning(
            "study %r reached max_trials=%d with %d / %d evaluations (many duplicates?)",
            study.study_name,
            max_trials,
            done,
            n_evaluations,
        )
        return
    if not paid_metric:
        budget = min(budget, n_evaluations - done)
    study.optimize(
        objective,
        n_trials=budget,
        timeout=timeout_s,
        callbacks=[*callbacks, stop_when_done],
        gc_after_trial=False,
        show_progress_bar=False,
    )


def create_search(
    space: SearchSpace,
    objectives: Sequence[str | LatencyModel] = (ACCURACY,),
    *,
    accuracy: Callable[[Arch], float] | None = None,
    latency_models: Sequence[LatencyModel] = (),
    constraints: Sequence[str | Constraint] | Mapping[str, float] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    n_evaluations: int = 100,
    storage: str | Path | BaseStorage | None = None,
    study_name: str = "search",
    seed: int = 0,
    sampler_options: Mapping[str, Any] | None = None,
    model_dtype: str = "fp32",
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    run_dir: str | Path | None = None,
    recipe: Mapping[str, Any] | None = None,
    margins: Mapping[str, float] | None = None,
    metrics: Sequence[Metric] = (),
) -> tuple[optuna.Study, SearchProblem]:
    """Create (or load, to resume) the study of a search without running a trial; see
    `run_search` for the arguments. Workers can `join_worker` the study right away."""
    if n_evaluations < 1:
        raise ValueError(f"n_evaluations must be >= 1, got {n_evaluations}")
    problem = SearchProblem(
        space, objectives, accuracy, latency_models, constraints, model_dtype, margins, metrics
    )
    if storage is None and run_dir is not None:
        storage = Path(run_dir) / "study.db"  # one process: SQLite in the run folder
    store = open_storage(storage, heartbeat_interval_s, grace_period_s)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_name = sampler if isinstance(sampler, str) else type(sampler).__name__
    study = optuna.create_study(
        study_name=study_name,
        storage=store,
        directions=problem.directions,  # type: ignore[arg-type]
        load_if_exists=True,
    )
    _check_same_problem(study, problem)
    if store is not None and heartbeat_interval_s is not None:
        optuna.storages.fail_stale_trials(study)
    n_existing = len(study.get_trials(deepcopy=False))
    if isinstance(sampler, str):
        run_seed = (seed + 1_000_003 * n_existing) % 2**32
        study.sampler = make_sampler(sampler, problem, run_seed, **dict(sampler_options or {}))
    else:
        study.sampler = sampler
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(
            CONFIG_ATTR, _study_config(problem, n_evaluations, sampler_name, recipe)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(problem.objectives))
    elif study.user_attrs[CONFIG_ATTR].get("n_evaluations") != n_evaluations:
        cfg = dict(study.user_attrs[CONFIG_ATTR])
        cfg["n_evaluations"] = n_evaluations
        study.set_user_attr(CONFIG_ATTR, cfg)
    if n_existing:
        _recover_paid(study)
    return study, problem


def run_search(
    space: SearchSpace,
    objectives: Sequence[str | LatencyModel] = (ACCURACY,),
    *,
    accuracy: Callable[[Arch], float] | None = None,
    latency_models: Sequence[LatencyModel] = (),
    constraints: Sequence[str | Constraint] | Mapping[str, float] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    n_evaluations: int = 100,
    max_trials: int | None = None,
    storage: str | Path | BaseStorage | None = None,
    study_name: str = "search",
    seed: int = 0,
    sampler_options: Mapping[str, Any] | None = None,
    model_dtype: str = "fp32",
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    timeout_s: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    run_dir: str | Path | None = None,
    recipe: Mapping[str, Any] | None = None,
    margins: Mapping[str, float] | None = None,
    metrics: Sequence[Metric] = (),
) -> optuna.Study:
    """Search `space` and return the Optuna study.

    Args:
        objectives: metric names or latency-model objects (see `SearchProblem`), e.g.
            `["accuracy", pixel3_lut, "peak_activation_bytes"]`.
        accuracy: the paid metric, any callable `arch -> accuracy` (higher is better).
        latency_models: further latency models, recorded on every trial and usable in budgets.
        constraints: budgets, e.g. `["latency_ms@pixel3 <= 20"]` or `{"params": 2e6}`.
        margins: metric -> relative margin its `<=` budget keeps (feasible when predicted x
            (1 + margin) <= bound; `auto_margin` derives one from held-out error); stored
            with the study, so a joining worker applies the same.
        sampler: a name from `SAMPLERS` (default `auto`: ours when accuracy is an objective,
            else NSGA-II) or an Optuna sampler object.
        n_evaluations: the budget: distinct archs whose accuracy is paid for (duplicates and
            isomorphic archs reuse a paid value and do not count). Without accuracy among
            the metrics, the number of complete trials.
        max_trials: cap on trials, duplicates included (default 20 x n_evaluations).
        storage: None (in memory), a URL or a path (`open_storage`). On an existing study the
            search resumes: it runs until the study holds `n_evaluations`.
        seed: seeds the sampler; a resumed search derives a fresh seed from the trial count so
            it does not replay the first run's choices.
        sampler_options: keyword arguments of the sampler's constructor.
        heartbeat_interval_s, grace_period_s: database storages only; trials of a worker that
            stopped beating for `grace_period_s` are failed when a search (re)starts.
        callbacks: Optuna callbacks `(study, frozen_trial)` run after each trial.
        run_dir: with no `storage`, keep the study in `run_dir/study.db` (SQLite); see
            `nas.viz.export_run` for the rest of a run folder.
        recipe: JSON-able notes on how the caller built the objectives (device names,
            latency-model kind, table files), stored with a new study (`study_settings`) so
            that a worker can build the same ones; the search itself never reads it.
        metrics: further free metrics (`Metric` objects) the objectives and budgets may name.
    """
    study, problem = create_search(
        space,
        objectives,
        accuracy=accuracy,
        latency_models=latency_models,
        constraints=constraints,
        sampler=sampler,
        n_evaluations=n_evaluations,
        storage=storage,
        study_name=study_name,
        seed=seed,
        sampler_options=sampler_options,
        model_dtype=model_dtype,
        heartbeat_interval_s=heartbeat_interval_s,
        grace_period_s=grace_period_s,
        run_dir=run_dir,
        recipe=recipe,
        margins=margins,
        metrics=metrics,
    )
    _optimize(study, problem, n_evaluations, max_trials or 20 * n_evaluations, timeout_s, callbacks)
    return study


def _existing_study(storage: BaseStorage, where: object, study_name: str) -> optuna.Study:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise ValueError(
            f"no study {study_name!r} in {where}; studies there: {names or 'none'}"
        ) from None
    if CONFIG_ATTR not in study.user_attrs:
        raise ValueError(f"study {study_name!r} was not created by run_search (no {CONFIG_ATTR!r})")
    return study


def study_settings(storage: str | Path | BaseStorage, study_name: str = "search") -> dict[str, Any]:
    """What a study stored when it was created (`CONFIG_ATTR`): space, objectives, directions,
    budgets, its total of evaluations, sampler, and the caller's `recipe` if one was given."""
    store = open_storage(storage, must_exist=True)
    if store is None:
        raise ValueError("a study's settings need a storage (URL or file), got None")
    return dict(_existing_study(store, storage, study_name).user_attrs[CONFIG_ATTR])


def join_worker(
    space: SearchSpace,
    storage: str | Path | BaseStorage,
    study_name: str = "search",
    objectives: Sequence[str | LatencyModel] = (ACCURACY,),
    *,
    accuracy: Callable[[Arch], float] | None = None,
    latency_models: Sequence[LatencyModel] = (),
    constraints: Sequence[str | Constraint] | Mapping[str, float] | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    model_dtype: str = "fp32",
    max_trials: int | None = None,
    n_evaluations: int | None = None,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    timeout_s: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    margins: Mapping[str, float] | None = None,
    metrics: Sequence[Metric] = (),
) -> optuna.Study:
    """Join an existing study as one more worker, until the study holds its budget.

    The study must exist (created by `run_search`); the worker must pass the same space,
    objectives and budgets (checked against what the study stored), and the same kind of
    accuracy source and latency models (objects cannot be stored). The sampler defaults to the
    one the study was created with; the seed defaults to one drawn from the process id, so
    workers do not propose the same archs. `n_evaluations` is the total the worker stops at
    (default: the study's own), counted over every worker, as `run_search` counts it: a
    trial that would pass it is not started. The budgets' margins are the study's own (stored
    when it was created); margins given here must equal them.
    """
    store = open_storage(storage, heartbeat_interval_s, grace_period_s, must_exist=True)
    if store is None:
        raise ValueError("join_worker needs a shared storage (URL or journal file), got None")
    study = _existing_study(store, storage, study_name)
    cfg = study.user_attrs[CONFIG_ATTR]
    problem = SearchProblem(
        space,
        objectives,
        accuracy,
        latency_models,
        constraints,
        model_dtype,
        margins if margins is not None else cfg.get("margins"),
        metrics,
    )
    _check_same_problem(study, problem)
    name = sampler or str(cfg.get("sampler", "auto"))
    worker_seed = seed if seed is not None else (os.getpid() * 7919) % 2**32
    study.sampler = make_sampler(name, problem, worker_seed, **dict(sampler_options or {}))
    total = int(n_evaluations if n_evaluations is not None else cfg["n_evaluations"])
    if total < 1:
        raise ValueError(f"n_evaluations must be >= 1, got {total}")
    _optimize(study, problem, total, max_trials or 20 * total, timeout_s, callbacks)
    return study


# -- price study (the demo's free objectives) ------------------------------------------------
def price_study(
    space: SearchSpace,
    n_trials: int,
    storage: str | None = None,
    study_name: str = "price",
    seed: int = 0,
) -> optuna.Study:
    """A 3-objective study (minimise MACs, params, peak memory) over `n_trials` archs.

    Trials are sampled at random with `seed`; every trial records its arch key in
    `user_attrs["arch_key"]`. With a storage URL the study resumes: only the trials still
    missing are run.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    return run_search(
        space,
        list(COST_OBJECTIVES),
        sampler="random",
        n_evaluations=n_trials,
        storage=storage,
        study_name=study_name,
        seed=seed,
    )

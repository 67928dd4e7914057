"""Optuna glue: studies over a search space, with paid accuracy and free hardware objectives.

A search is a real `optuna.Study`. Its objectives are any of accuracy (from any callable: a
supernet, a table, a predictor), latency per device (latency-model objects), MACs, params, peak
activation memory and model size; budgets (`latency_ms@pixel3 <= 20`) become Optuna
constraints through `trial.set_constraint`. Samplers by name: Optuna's `nsga2`, `nsga3`, `tpe`,
`gp`, `random`, and our `frontier` (`nas.search.samplers.frontier.FrontierSampler`), which spends accuracy
evaluations only where a predictor says the accuracy/latency front can move.

Every trial records its arch key, canonical key and all metric values (`user_attrs`). An arch
whose canonical key was already paid for is not evaluated again: its accuracy is reused and the
trial says `reused_from`. A paid accuracy is written to the trial *before* the trial completes,
so a killed worker loses no evaluation. Storage: SQLite in the run folder for one process
(`sqlite_url`), a journal file for several processes on one machine (`*.journal`), or any
database URL Optuna supports (PostgreSQL for many machines); `join_worker` adds a process to a
running study, and `run_search` on an existing storage resumes.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas.core.space import Arch, SearchSpace
from nas.search.objectives import ACCURACY, Constraint, LatencyModel, SearchProblem
from nas.search.pareto import hypervolume, pareto_mask
from nas.search.pareto import hypervolume_history as _hv_history

log = logging.getLogger(__name__)

COST_OBJECTIVES = ("macs", "params", "peak_activation_bytes")
CONFIG_ATTR = "edge_nas"  # study user attr holding the problem's description and the budget

__all__ = [
    "COST_OBJECTIVES",
    "SAMPLERS",
    "count_evaluations",
    "create_search",
    "default_reference",
    "export_pareto_csv",
    "export_run",
    "fail_running_trials",
    "front_hypervolume",
    "hypervolume",
    "hypervolume_history",
    "join_worker",
    "make_sampler",
    "open_storage",
    "pareto_frame",
    "pareto_mask",
    "price_study",
    "run_search",
    "sqlite_url",
    "trials_frame",
]


# -- storage ---------------------------------------------------------------------------------
def sqlite_url(path: str | Path) -> str:
    """Optuna storage URL of an SQLite file (created on first use)."""
    return f"sqlite:///{Path(path).resolve()}"


JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


def open_storage(
    storage: str | Path | BaseStorage | None,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
) -> BaseStorage | None:
    """An Optuna storage from a URL, a file path, a storage object, or None (in memory).

    - `sqlite:///...`, `postgresql://...`, `mysql://...`: a database (RDB storage). With a
      heartbeat, trials of a worker that died are failed after `grace_period_s`.
    - a path ending in `.db` / `.sqlite`: SQLite in that file (one process at a time).
    - a path ending in `.journal` / `.log` / `.jsonl`: Optuna's journal file storage (several
      processes on one machine, file locks; no heartbeat).
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    text = str(storage)
    if "://" in text:
        if grace_period_s is not None and heartbeat_interval_s is None:
            raise ValueError("grace_period_s needs heartbeat_interval_s")
        engine_kwargs: dict[str, Any] = {}
        if text.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True
        return optuna.storages.RDBStorage(
            text,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
        )
    path = Path(text)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_storage(sqlite_url(path), heartbeat_interval_s, grace_period_s)
    if path.suffix in JOURNAL_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    raise ValueError(
        f"storage {text!r} is neither a database URL (sqlite:///run/study.db, "
        "postgresql://user:pw@localhost/db) nor a file path ending in .db/.sqlite (SQLite) or "
        f"{'/'.join(JOURNAL_SUFFIXES)} (journal file)"
    )


def fail_running_trials(study: optuna.Study) -> int:
    """Mark every RUNNING trial FAIL. Only for a study no live worker is using (storages
    without heartbeat, e.g. a journal file, after a crash); returns how many were failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


# -- samplers --------------------------------------------------------------------------------
SAMPLERS = ("auto", "frontier", "gp", "nsga2", "nsga3", "random", "tpe")
_SAMPLER_ALIASES = {
    "nsgaii": "nsga2",
    "nsga-ii": "nsga2",
    "nsga_ii": "nsga2",
    "nsgaiii": "nsga3",
    "nsga-iii": "nsga3",
    "nsga_iii": "nsga3",
    "ours": "frontier",
}


def make_sampler(
    name: str,
    problem: SearchProblem | None = None,
    seed: int | None = 0,
    **options: Any,
) -> optuna.samplers.BaseSampler:
    """A sampler by name: `nsga2`, `nsga3`, `tpe`, `gp`, `random` (Optuna's, with `options`
    passed to their constructors), `frontier` (ours; needs `problem`), or `auto`: `frontier`
    when accuracy is an objective, else `nsga2` (every objective is free to compute)."""
    key = _SAMPLER_ALIASES.get(name.lower(), name.lower())
    if key == "auto":
        key = "frontier" if problem is not None and ACCURACY in problem.objectives else "nsga2"
    if key not in SAMPLERS:
        close = difflib.get_close_matches(name.lower(), [*SAMPLERS, *_SAMPLER_ALIASES], n=2)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown sampler {name!r}.{hint} Valid: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if key == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if key == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if key == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
        if key == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed, **options)
        if key == "gp":
            return optuna.samplers.GPSampler(seed=seed, **options)
    from nas.search.samplers.frontier import FrontierSampler

    if problem is None:
        raise ValueError("the 'frontier' sampler needs the search problem (problem=...)")
    return FrontierSampler(problem, seed=seed, **options)


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
def _study_config(problem: SearchProblem, n_evaluations: int, sampler: str) -> dict[str, Any]:
    return {
        **problem.describe(),
        "n_evaluations": n_evaluations,
        "sampler": sampler,
        "paid_accuracy": ACCURACY in problem.used_metrics,
    }


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
) -> tuple[optuna.Study, SearchProblem]:
    """Create (or load, to resume) the study of a search without running a trial; see
    `run_search` for the arguments. Workers can `join_worker` the study right away."""
    if n_evaluations < 1:
        raise ValueError(f"n_evaluations must be >= 1, got {n_evaluations}")
    problem = SearchProblem(space, objectives, accuracy, latency_models, constraints, model_dtype)
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
        study.set_user_attr(CONFIG_ATTR, _study_config(problem, n_evaluations, sampler_name))
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
) -> optuna.Study:
    """Search `space` and return the Optuna study.

    Args:
        objectives: metric names or latency-model objects (see `SearchProblem`), e.g.
            `["accuracy", pixel3_lut, "peak_activation_bytes"]`.
        accuracy: the paid metric, any callable `arch -> accuracy` (higher is better).
        latency_models: further latency models, recorded on every trial and usable in budgets.
        constraints: budgets, e.g. `["latency_ms@pixel3 <= 20"]` or `{"params": 2e6}`.
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
            `export_run` for the rest of a run folder.
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
    )
    _optimize(study, problem, n_evaluations, max_trials or 20 * n_evaluations, timeout_s, callbacks)
    return study


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
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    timeout_s: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> optuna.Study:
    """Join an existing study as one more worker, until the study holds its budget.

    The study must exist (created by `run_search`); the worker must pass the same space,
    objectives and budgets (checked against what the study stored), and the same kind of
    accuracy source and latency models (objects cannot be stored). The sampler defaults to the
    one the study was created with; the seed defaults to one drawn from the process id, so
    workers do not propose the same archs.
    """
    store = open_storage(storage, heartbeat_interval_s, grace_period_s)
    if store is None:
        raise ValueError("join_worker needs a shared storage (URL or journal file), got None")
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = optuna.study.get_all_study_names(store)
        raise ValueError(
            f"no study {study_name!r} in {storage}; studies there: {names or 'none'}"
        ) from None
    cfg = study.user_attrs.get(CONFIG_ATTR)
    if cfg is None:
        raise ValueError(f"study {study_name!r} was not created by run_search (no {CONFIG_ATTR!r})")
    problem = SearchProblem(space, objectives, accuracy, latency_models, constraints, model_dtype)
    _check_same_problem(study, problem)
    name = sampler or str(cfg.get("sampler", "auto"))
    worker_seed = seed if seed is not None else (os.getpid() * 7919) % 2**32
    study.sampler = make_sampler(name, problem, worker_seed, **dict(sampler_options or {}))
    n_evaluations = int(cfg["n_evaluations"])
    _optimize(study, problem, n_evaluations, max_trials or 20 * n_evaluations, timeout_s, callbacks)
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


# -- frames and fronts -----------------------------------------------------------------------
def trials_frame(study: optuna.Study, include_reused: bool = True) -> pd.DataFrame:
    """One row per complete trial: number, arch key, canonical key, whether its accuracy was
    paid in this trial, feasibility, objective values, every recorded metric, and the arch's
    params (`arch.<dim>`)."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    rows = []
    for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        assert t.values is not None
        if not include_reused and "reused_from" in t.user_attrs:
            continue
        row: dict[str, object] = {
            "trial": t.number,
            "arch_key": t.user_attrs.get("arch_key"),
            "canonical_key": t.user_attrs.get("canonical_key"),
            "evaluated": bool(t.user_attrs.get("evaluated", False)),
            "feasible": all(float(v) <= 0 for v in t.constraints.values()),
        }
        row.update(dict(t.user_attrs.get("metrics", {})))
        row.update(dict(zip(names, t.values, strict=True)))
        row.update({f"arch.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _direction(name: str, directions: Mapping[str, str] | None) -> str:
    if directions and name in directions:
        return directions[name]
    return "maximize" if name == ACCURACY or name.endswith("_acc") else "minimize"


def _minimised(
    frame: pd.DataFrame, objectives: Sequence[str], directions: Mapping[str, str] | None
) -> np.ndarray:
    missing = [o for o in objectives if o not in frame.columns]
    if missing:
        raise KeyError(
            f"objective column(s) {missing} not in frame; columns: {list(frame.columns)}"
        )
    signs = np.array([-1.0 if _direction(o, directions) == "maximize" else 1.0 for o in objectives])
    return frame[list(objectives)].to_numpy(dtype=float) * signs


def _frame_and_objectives(
    study_or_frame: optuna.Study | pd.DataFrame,
    objectives: Sequence[str] | None,
    only_evaluated: bool,
) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    if isinstance(study_or_frame, optuna.Study):
        study = study_or_frame
        frame = trials_frame(study)
        names = list(study.metric_names or [])
        dirs = {
            n: ("maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize")
            for n, d in zip(names, study.directions, strict=True)
        }
        objs = list(objectives) if objectives else names
        cfg = study.user_attrs.get(CONFIG_ATTR, {})
        if only_evaluated and not frame.empty and cfg.get("paid_accuracy", False):
            frame = frame[frame["evaluated"]]
    else:
        frame, dirs = study_or_frame, {}
        if objectives is None:
            raise ValueError("pass objectives=[...] when giving a frame")
        objs = list(objectives)
        if only_evaluated and "evaluated" in frame.columns:
            frame = frame[frame["evaluated"].astype(bool)]
    return frame, objs, dirs


def pareto_frame(
    study_or_frame: optuna.Study | pd.DataFrame,
    objectives: Sequence[str] | None = None,
    directions: Mapping[str, str] | None = None,
    only_evaluated: bool = True,
    feasible_only: bool = True,
) -> pd.DataFrame:
    """The non-dominated rows, sorted by the first cheap objective.

    `objectives` may be any recorded metrics, so one study gives the front per device
    (`["accuracy", "latency_ms@pixel3"]`, then `["accuracy", "latency_ms@raspi4"]`). With
    `only_evaluated`, only archs whose accuracy was paid count as found (trials that reused an
    isomorphic arch's accuracy are left out). Directions: the study's; elsewhere `accuracy` and
    names ending `_acc` are maximised, the rest minimised, unless `directions` says otherwise.
    """
    frame, objs, dirs = _frame_and_objectives(study_or_frame, objectives, only_evaluated)
    dirs = {**dirs, **(directions or {})}
    if frame.empty:
        return frame
    if feasible_only and "feasible" in frame.columns:
        frame = frame[frame["feasible"].astype(bool)]
    front = frame[pareto_mask(_minimised(frame, objs, dirs))]
    sort_by = next((o for o in objs if _direction(o, dirs) == "minimize"), objs[0])
    return front.sort_values(sort_by).reset_index(drop=True)


def default_reference(
    frame: pd.DataFrame, objectives: Sequence[str], directions: Mapping[str, str] | None = None
) -> dict[str, float]:
    """The worst value of each objective over `frame` (the nadir of all evaluated archs).

    A convenient default only: hypervolumes are comparable across runs only with one fixed
    reference point, such as a latency budget and the least useful accuracy.
    """
    v = _minimised(frame, objectives, directions)
    worst = v.max(axis=0)
    return {
        o: float(w if _direction(o, directions) == "minimize" else -w)
        for o, w in zip(objectives, worst, strict=True)
    }


def _reference_vector(
    reference: Mapping[str, float], objectives: Sequence[str], directions: Mapping[str, str] | None
) -> np.ndarray:
    missing = [o for o in objectives if o not in reference]
    if missing:
        raise ValueError(f"reference point lacks {missing}; it has {sorted(reference)}")
    return np.array(
        [
            reference[o] * (-1.0 if _direction(o, directions) == "maximize" else 1.0)
            for o in objectives
        ]
    )


def front_hypervolume(
    study_or_frame: optuna.Study | pd.DataFrame,
    reference: Mapping[str, float],
    objectives: Sequence[str] | None = None,
    directions: Mapping[str, str] | None = None,
    only_evaluated: bool = True,
) -> float:
    """Hypervolume of the found archs w.r.t. `reference` (one value per objective, in the
    metric's own unit and direction: e.g. `{"accuracy": 90.7, "latency_ms@pixel3": 23.2}`
    counts the region of archs more accurate than 90.7 % and faster than 23.2 ms)."""
    frame, objs, dirs = _frame_and_objectives(study_or_frame, objectives, only_evaluated)
    dirs = {**dirs, **(directions or {})}
    if frame.empty:
        return 0.0
    if "feasible" in frame.columns:
        frame = frame[frame["feasible"].astype(bool)]
    return hypervolume(_minimised(frame, objs, dirs), _reference_vector(reference, objs, dirs))


def hypervolume_history(
    study_or_frame: optuna.Study | pd.DataFrame,
    reference: Mapping[str, float],
    objectives: Sequence[str] | None = None,
    directions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Hypervolume after each paid evaluation, in trial order: columns `evaluation` (1, 2,
    ...), `trial`, `hypervolume`. The reference point is explained in `front_hypervolume`."""
    frame, objs, dirs = _frame_and_objectives(study_or_frame, objectives, True)
    dirs = {**dirs, **(directions or {})}
    if frame.empty:
        return pd.DataFrame(columns=["evaluation", "trial", "hypervolume"])
    frame = frame.sort_values("trial") if "trial" in frame.columns else frame
    v = _minimised(frame, objs, dirs)
    if "feasible" in frame.columns:
        v = np.where(frame["feasible"].to_numpy(bool)[:, None], v, np.inf)
    hv = _hv_history(v, _reference_vector(reference, objs, dirs))
    return pd.DataFrame(
        {
            "evaluation": np.arange(1, len(frame) + 1),
            "trial": frame["trial"].to_numpy()
            if "trial" in frame.columns
            else np.arange(len(frame)),
            "hypervolume": hv,
        }
    )


def export_pareto_csv(
    study_or_frame: optuna.Study | pd.DataFrame,
    path: str | Path,
    objectives: Sequence[str] | None = None,
    directions: Mapping[str, str] | None = None,
) -> Path:
    """Write `pareto_frame(...)` to CSV; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    pareto_frame(study_or_frame, objectives, directions).to_csv(p, index=False)
    return p


def export_run(
    study: optuna.Study,
    out: str | Path,
    reference: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write what a person looks at into the run folder `out`: `trials.csv` (every trial),
    `pareto.csv` (the study's front), `pareto_<device>.csv` and `fronts.png` (accuracy against
    each recorded device latency), and with a `reference` point `hypervolume.csv` and
    `hypervolume.png`. Returns the written paths by name."""
    from nas import viz

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    frame = trials_frame(study)
    frame.to_csv(out_dir / "trials.csv", index=False)
    written["trials"] = out_dir / "trials.csv"
    if frame.empty:
        return written
    written["pareto"] = export_pareto_csv(study, out_dir / "pareto.csv")
    devices = [c for c in frame.columns if str(c).startswith("latency_ms@")]
    if ACCURACY in frame.columns and devices:
        for col in devices:
            name = col.split("@", 1)[1].replace(":", "_")
            written[f"pareto_{name}"] = export_pareto_csv(
                study, out_dir / f"pareto_{name}.csv", [ACCURACY, col]
            )
        evaluated = frame[frame["evaluated"]] if frame["evaluated"].any() else frame
        fig = viz.plot_fronts_per_device(evaluated, path=out_dir / "fronts.png")
        viz.close(fig)
        written["fronts"] = out_dir / "fronts.png"
    if reference is not None:
        hist = hypervolume_history(study, reference, list(reference))
        hist.to_csv(out_dir / "hypervolume.csv", index=False)
        fig = viz.plot_hypervolume_history(
            {study.study_name: hist}, path=out_dir / "hypervolume.png"
        )
        viz.close(fig)
        written["hypervolume"] = out_dir / "hypervolume.csv"
    return written

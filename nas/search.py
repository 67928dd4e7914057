"""Optuna glue: studies over a search space whose trials record arch keys and objective values.

For now the free objectives (MACs, parameters, peak activation memory) priced from layer
specs; accuracy predictors, latency models and constraints plug into the same study.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from nas.space import SearchSpace

log = logging.getLogger(__name__)

COST_OBJECTIVES = ("macs", "params", "peak_activation_bytes")


def sqlite_url(path: str | Path) -> str:
    """Optuna storage URL of an SQLite file (created on first use)."""
    return f"sqlite:///{Path(path).resolve()}"


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=["minimize"] * len(COST_OBJECTIVES),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(COST_OBJECTIVES))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    remaining = max(n_trials - done, 0)
    if remaining == 0:
        log.info("study %r already has %d complete trials", study_name, done)
        return study

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        arch = space.suggest(trial)
        cost = space.cost(arch)
        trial.set_user_attr("arch_key", space.key(arch))
        return float(cost.macs), float(cost.params), float(cost.peak_activation_bytes)

    study.optimize(objective, n_trials=remaining)
    return study


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per complete trial: number, arch key, params of the arch, and objective values."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    rows = []
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        assert t.values is not None
        row: dict[str, object] = {"trial": t.number, "arch_key": t.user_attrs.get("arch_key")}
        row.update(dict(zip(names, t.values, strict=True)))
        row.update({f"arch.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of `values` (all objectives minimised) that no other row dominates."""
    v = np.asarray(values, dtype=float)
    mask = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        if mask[i]:
            dominated = np.all(v[i] <= v, axis=1) & np.any(v[i] < v, axis=1)
            mask[dominated] = False
    return mask

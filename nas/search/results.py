"""What a study found: trials and Pareto fronts as frames, hypervolumes, and the run folder's
CSVs and plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from nas.search.objectives import ACCURACY
from nas.search.pareto import hypervolume, pareto_mask
from nas.search.pareto import hypervolume_history as _hv_history
from nas.search.study import CONFIG_ATTR

__all__ = [
    "default_reference",
    "export_pareto_csv",
    "front_hypervolume",
    "hypervolume_history",
    "pareto_frame",
    "trials_frame",
]


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

"""Samplers of a search by name: Optuna's, and ours (`frontier`, in `samplers/frontier.py`)."""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import optuna

from nas.search.objectives import ACCURACY, SearchProblem

__all__ = ["SAMPLERS", "make_sampler"]

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

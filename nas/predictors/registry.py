"""The accuracy predictors by kind name: make one, or load any saved one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.core.files import FileProblem
from nas.predictors.base import _REFIT, Predictor, _load_npz
from nas.predictors.ensemble import EnsemblePredictor
from nas.predictors.gbt import GBTPredictor
from nas.predictors.gp import GPPredictor
from nas.predictors.mlp import MLPPredictor
from nas.predictors.ridge import RidgePredictor

__all__ = ["PREDICTORS", "load_predictor", "make_predictor"]


PREDICTORS: dict[str, Any] = {
    c.kind: c for c in (RidgePredictor, GBTPredictor, GPPredictor, MLPPredictor, EnsemblePredictor)
}


def make_predictor(name: str, **kwargs: Any) -> Predictor:
    """A predictor by kind name (`ridge`, `gbt`, `gp`, `mlp`, `ensemble`)."""
    if name not in PREDICTORS:
        import difflib

        close = difflib.get_close_matches(name, list(PREDICTORS), n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown predictor {name!r}.{hint} Valid: {', '.join(PREDICTORS)}")
    return PREDICTORS[name](**kwargs)


def load_predictor(path: str | Path) -> Predictor:
    """Load any predictor saved with `.save(path)` (plain arrays and JSON, no pickle)."""
    kind, config, arrays = _load_npz(path)
    if kind not in PREDICTORS:
        raise FileProblem(
            path, f"holds an unknown predictor kind {kind!r} (valid: {list(PREDICTORS)})", _REFIT
        )
    try:
        return PREDICTORS[kind]._from_saved(config, arrays)
    except (KeyError, ValueError, TypeError) as err:  # an array or a setting missing
        raise FileProblem(path, f"is an incomplete {kind} predictor ({err!r})", _REFIT) from None

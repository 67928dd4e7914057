"""Ridge regression in closed form, the simplest accuracy predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.predictors.base import _check_xy, _need_fit, _save_npz

__all__ = ["RidgePredictor"]


class RidgePredictor:
    """Ridge regression in closed form (intercept not penalised)."""

    kind: ClassVar[str] = "ridge"

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgePredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        xm, tm = x.mean(axis=0), t.mean()
        xc = x - xm
        a = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(a, xc.T @ (t - tm))
        self.intercept_ = float(tm - xm @ self.coef_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self.coef_ is not None, self)
        assert self.coef_ is not None
        x, _ = _check_xy(X)
        return x @ self.coef_ + self.intercept_

    def save(self, path: str | Path) -> Path:
        _need_fit(self.coef_ is not None, self)
        return _save_npz(
            path,
            self.kind,
            {"alpha": self.alpha, "intercept": self.intercept_},
            {"coef": self.coef_},
        )

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> RidgePredictor:
        p = cls(alpha=float(config["alpha"]))
        p.coef_, p.intercept_ = arrays["coef"], float(config["intercept"])
        return p

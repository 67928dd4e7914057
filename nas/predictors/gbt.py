"""Gradient-boosted regression trees (scikit-learn) as an accuracy predictor, stored as plain
node arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.predictors.base import _check_xy, _need_fit, _save_npz

__all__ = ["GBTPredictor"]


class GBTPredictor:
    """Gradient-boosted regression trees (scikit-learn), stored as plain node arrays.

    After fitting, the trees are copied out of scikit-learn into arrays (children, feature,
    threshold, value), and prediction walks those arrays; so a loaded predictor needs no pickle
    and gives bit-identical answers.
    """

    kind: ClassVar[str] = "gbt"

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        subsample: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.n_estimators, self.learning_rate = n_estimators, learning_rate
        self.max_depth, self.subsample, self.seed = max_depth, subsample, seed
        self._trees: dict[str, np.ndarray] | None = None
        self._init = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> GBTPredictor:
        from sklearn.ensemble import GradientBoostingRegressor

        x, t = _check_xy(X, y)
        model = GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            random_state=self.seed,
        ).fit(x, t)
        trees = [est[0].tree_ for est in model.estimators_]
        offsets = np.cumsum([0] + [tr.node_count for tr in trees])
        left = np.concatenate([tr.children_left for tr in trees])
        right = np.concatenate([tr.children_right for tr in trees])
        # child indices become global; leaves stay -1
        for i, tr in enumerate(trees):
            sl = slice(offsets[i], offsets[i + 1])
            left[sl] = np.where(tr.children_left >= 0, tr.children_left + offsets[i], -1)
            right[sl] = np.where(tr.children_right >= 0, tr.children_right + offsets[i], -1)
        self._trees = {
            "left": left.astype(np.int64),
            "right": right.astype(np.int64),
            "feature": np.concatenate([tr.feature for tr in trees]).astype(np.int64),
            "threshold": np.concatenate([tr.threshold for tr in trees]),
            "value": np.concatenate([tr.value.reshape(-1) for tr in trees]) * self.learning_rate,
            "roots": offsets[:-1].astype(np.int64),
        }
        self._init = float(model.init_.predict(x[:1])[0])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self._trees is not None, self)
        assert self._trees is not None
        x, _ = _check_xy(X)
        tr = self._trees
        out = np.full(x.shape[0], self._init)
        rows = np.arange(x.shape[0])
        for root in tr["roots"]:
            node = np.full(x.shape[0], root)
            while True:
                inner = tr["left"][node] >= 0
                if not inner.any():
                    break
                f = tr["feature"][node]
                go_left = x[rows, np.maximum(f, 0)] <= tr["threshold"][node]
                nxt = np.where(go_left, tr["left"][node], tr["right"][node])
                node = np.where(inner, nxt, node)
            out += tr["value"][node]
        return out

    def save(self, path: str | Path) -> Path:
        _need_fit(self._trees is not None, self)
        assert self._trees is not None
        config = {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "max_depth": self.max_depth,
            "subsample": self.subsample,
            "seed": self.seed,
            "init": self._init,
        }
        return _save_npz(path, self.kind, config, dict(self._trees))

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> GBTPredictor:
        init = float(config.pop("init"))
        p = cls(**config)
        p._trees, p._init = dict(arrays), init
        return p

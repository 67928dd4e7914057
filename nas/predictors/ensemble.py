"""A deep ensemble of MLP accuracy predictors whose spread is the uncertainty
(Lakshminarayanan et al., NeurIPS 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.predictors.base import _check_xy, _need_fit, _save_npz, _Scaler
from nas.predictors.mlp import MLPPredictor

__all__ = ["EnsemblePredictor"]


class EnsemblePredictor:
    """A deep ensemble: `n_members` MLPs from different seeds (and bootstrap resamples);
    the spread of their answers is the uncertainty."""

    kind: ClassVar[str] = "ensemble"

    def __init__(
        self,
        n_members: int = 5,
        hidden: Sequence[int] = (128, 128),
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        bootstrap: bool = True,
        seed: int = 0,
    ) -> None:
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        self.n_members, self.bootstrap, self.seed = n_members, bootstrap, seed
        self.member_config: dict[str, Any] = {
            "hidden": tuple(int(h) for h in hidden),
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
        }
        self.members_: list[MLPPredictor] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> EnsemblePredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        rng = np.random.default_rng(self.seed)
        self.members_ = []
        for m in range(self.n_members):
            idx = rng.integers(0, len(t), len(t)) if self.bootstrap else np.arange(len(t))
            member = MLPPredictor(**self.member_config, seed=self.seed * 1000 + m)
            self.members_.append(member.fit(x[idx], t[idx]))
        return self

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _need_fit(bool(self.members_), self)
        preds = np.stack([m.predict(X) for m in self.members_])
        return preds.mean(0), preds.std(0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def save(self, path: str | Path) -> Path:
        _need_fit(bool(self.members_), self)
        arrays: dict[str, np.ndarray] = {}
        scalers = []
        for i, m in enumerate(self.members_):
            assert m._weights is not None
            arrays.update({f"m{i}/{k}": v for k, v in m._weights.items()})
            scalers.append([m._scaler.mean, m._scaler.std])
        config = {
            "n_members": self.n_members,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.member_config.items()},
            "scalers": scalers,
        }
        return _save_npz(path, self.kind, config, arrays)

    @classmethod
    def _from_saved(
        cls, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> EnsemblePredictor:
        scalers = config.pop("scalers")
        p = cls(**config)
        for i, (mean, std) in enumerate(scalers):
            m = MLPPredictor(**p.member_config, seed=p.seed * 1000 + i)
            prefix = f"m{i}/"
            m._weights = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            m._scaler = _Scaler(float(mean), float(std))
            p.members_.append(m)
        return p

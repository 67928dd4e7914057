"""How well a predictor ranks archs: Kendall tau, Spearman rho and RMSE on held-out archs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from nas.predictors.base import Predictor, _check_xy

__all__ = ["RankingMetrics", "compare_predictors", "ranking_metrics"]


@dataclass(frozen=True)
class RankingMetrics:
    """Rank agreement and error of predictions on held-out archs."""

    kendall_tau: float
    spearman: float
    rmse: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def ranking_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> RankingMetrics:
    """Kendall tau (tau-b), Spearman rho and RMSE of `y_pred` against `y_true`."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    if t.size < 2:
        raise ValueError(f"ranking needs at least 2 held-out archs, got {t.size}")
    tau = stats.kendalltau(t, p).statistic
    rho = stats.spearmanr(t, p).statistic
    return RankingMetrics(
        kendall_tau=float(np.nan_to_num(tau)),
        spearman=float(np.nan_to_num(rho)),
        rmse=float(np.sqrt(np.mean((t - p) ** 2))),
        n=int(t.size),
    )


def compare_predictors(
    X: np.ndarray,
    y: np.ndarray,
    predictors: Mapping[str, Callable[[], Predictor]],
    n_train: Sequence[int] = (100, 300),
    n_test: int | None = 2000,
    seeds: Sequence[int] = (0,),
) -> pd.DataFrame:
    """Fit each predictor on `n` random rows and score it on other held-out rows.

    `predictors` maps a name to a factory (a fresh, unfitted predictor per fit). Returns one
    row per (predictor, n_train, seed) with Kendall tau, Spearman, RMSE and the fit time.
    """
    import time

    x, t = _check_xy(X, y)
    assert t is not None
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(t))
        for n in n_train:
            if n >= len(t):
                raise ValueError(f"n_train={n} leaves no held-out rows of {len(t)}")
            tr, te = perm[:n], perm[n:]
            if n_test is not None:
                te = te[:n_test]
            for name, factory in predictors.items():
                t0 = time.perf_counter()
                model = factory().fit(x[tr], t[tr])
                fit_s = time.perf_counter() - t0
                m = ranking_metrics(t[te], model.predict(x[te]))
                rows.append(
                    {"predictor": name, "n_train": n, "seed": seed, **m.as_dict(), "fit_s": fit_s}
                )
    return pd.DataFrame(rows)

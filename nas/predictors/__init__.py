"""Accuracy predictors: learn accuracy from (arch, accuracy) pairs, and say how well they rank.

Scikit-learn's shape: the constructor stores settings, `fit(X, y)` returns self, `predict(X)`
returns one value per row. `X` is a float matrix, usually a space's encoding of archs (see
`ArchFeatures`), optionally with free cost features (MACs, latency) beside it. Predictors with
uncertainty (`GPPredictor`, `EnsemblePredictor`) also give `predict_with_std`. Every predictor
saves to one `.npz` file of plain arrays plus a JSON header and loads without pickle
(`load_predictor`).

Side by side, as in the literature they come from: an MLP on one-hot codes (Once-for-All, Cai et
al. 2020: 3 x 400), gradient-boosted trees, ridge regression, a Gaussian process (Matérn 5/2,
hyper-parameters by marginal likelihood), and a deep ensemble (Lakshminarayanan et al. 2017).
Free signals beside them: the path encoding (`PathEncoding`) and zero-cost proxies of untrained
networks (`ZeroCostProxy`: synflow, jacov; loaded on first use, as they need torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.core.protocols import NotFittedError
from nas.predictors.base import AccuracyFn, Predictor, UncertainPredictor, one_blas_thread
from nas.predictors.encodings import PathEncoding, arch_paths
from nas.predictors.ensemble import EnsemblePredictor
from nas.predictors.features import ArchFeatures, PredictedAccuracy, fit_on_archs, sample_archs
from nas.predictors.gbt import GBTPredictor
from nas.predictors.gp import GPPredictor
from nas.predictors.metrics import RankingMetrics, compare_predictors, ranking_metrics
from nas.predictors.mlp import MLPPredictor
from nas.predictors.registry import PREDICTORS, load_predictor, make_predictor
from nas.predictors.ridge import RidgePredictor

if TYPE_CHECKING:  # loaded on first use at run time (below)
    from nas.predictors.zero_cost import PROXIES, ZeroCostProxy

__all__ = [
    "PREDICTORS",
    "PROXIES",
    "AccuracyFn",
    "ArchFeatures",
    "EnsemblePredictor",
    "GBTPredictor",
    "GPPredictor",
    "MLPPredictor",
    "NotFittedError",
    "PathEncoding",
    "PredictedAccuracy",
    "Predictor",
    "RankingMetrics",
    "RidgePredictor",
    "UncertainPredictor",
    "ZeroCostProxy",
    "arch_paths",
    "compare_predictors",
    "fit_on_archs",
    "load_predictor",
    "make_predictor",
    "one_blas_thread",
    "ranking_metrics",
    "sample_archs",
]


def __getattr__(name: str) -> object:
    if name in ("PROXIES", "ZeroCostProxy"):  # torch loads only when a proxy is asked for
        from nas.predictors import zero_cost

        return getattr(zero_cost, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

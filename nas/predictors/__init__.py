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
"""

from __future__ import annotations

from nas.core.protocols import NotFittedError
from nas.predictors.base import AccuracyFn, Predictor, UncertainPredictor, one_blas_thread
from nas.predictors.ensemble import EnsemblePredictor
from nas.predictors.features import ArchFeatures, PredictedAccuracy, fit_on_archs, sample_archs
from nas.predictors.gbt import GBTPredictor
from nas.predictors.gp import GPPredictor
from nas.predictors.metrics import RankingMetrics, compare_predictors, ranking_metrics
from nas.predictors.mlp import MLPPredictor
from nas.predictors.registry import PREDICTORS, load_predictor, make_predictor
from nas.predictors.ridge import RidgePredictor

__all__ = [
    "PREDICTORS",
    "AccuracyFn",
    "ArchFeatures",
    "EnsemblePredictor",
    "GBTPredictor",
    "GPPredictor",
    "MLPPredictor",
    "NotFittedError",
    "PredictedAccuracy",
    "Predictor",
    "RankingMetrics",
    "RidgePredictor",
    "UncertainPredictor",
    "compare_predictors",
    "fit_on_archs",
    "load_predictor",
    "make_predictor",
    "one_blas_thread",
    "ranking_metrics",
    "sample_archs",
]

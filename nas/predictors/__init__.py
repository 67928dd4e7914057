"""Accuracy predictors: learn accuracy from (arch, accuracy) pairs, and say how well they rank."""

from __future__ import annotations

from nas.predictors.gp import (
    PREDICTORS,
    AccuracyFn,
    ArchFeatures,
    EnsemblePredictor,
    GBTPredictor,
    GPPredictor,
    MLPPredictor,
    NotFittedError,
    PredictedAccuracy,
    Predictor,
    RankingMetrics,
    RidgePredictor,
    UncertainPredictor,
    compare_predictors,
    fit_on_archs,
    load_predictor,
    make_predictor,
    one_blas_thread,
    ranking_metrics,
    sample_archs,
)

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

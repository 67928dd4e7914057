"""Archs as predictor inputs (`ArchFeatures`), and the glue between archs and predictors:
fit on archs, a fitted predictor as an accuracy source, distinct archs to fit on."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nas.core.space import Arch, RngLike, SearchSpace, as_rng
from nas.predictors.base import AccuracyFn, Predictor

__all__ = ["ArchFeatures", "PredictedAccuracy", "fit_on_archs", "sample_archs"]


class ArchFeatures:
    """Turns archs into predictor inputs: the space's encoding, plus free cost features.

    `costs` maps a feature name to a function of a list of archs (MACs, a latency model's
    `predict_many`, ...). Cost features are log-transformed (they span orders of magnitude) and
    standardised with statistics taken from the archs passed to `fit` (a pool of candidates,
    not accuracies), so they are free to compute. `groups` labels columns for `GPPredictor`:
    group 0 is the encoding, group 1 the cost features.
    """

    def __init__(
        self,
        space: SearchSpace,
        encoding: str = "onehot",
        costs: Mapping[str, Callable[[Sequence[Arch]], np.ndarray]] | None = None,
    ) -> None:
        self.space, self.encoding = space, encoding
        self.costs = dict(costs or {})
        self._mean = np.zeros(len(self.costs))
        self._std = np.ones(len(self.costs))

    @property
    def names(self) -> list[str]:
        return self.space.feature_names(self.encoding) + [f"log_{c}" for c in self.costs]

    @property
    def groups(self) -> list[int]:
        return [0] * len(self.space.feature_names(self.encoding)) + [1] * len(self.costs)

    def _raw_costs(self, archs: Sequence[Arch], costs: np.ndarray | None) -> np.ndarray:
        if costs is None:
            cols = [np.asarray(fn(archs), dtype=np.float64) for fn in self.costs.values()]
            costs = np.stack(cols, axis=1) if cols else np.zeros((len(archs), 0))
        return np.log(np.maximum(np.asarray(costs, dtype=np.float64), 1e-12))

    def fit(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> ArchFeatures:
        """Take standardisation statistics of the cost features from `archs` (no accuracy)."""
        raw = self._raw_costs(archs, costs)
        if raw.shape[1]:
            self._mean = raw.mean(0)
            std = raw.std(0)
            self._std = np.where(std > 1e-12, std, 1.0)
        return self

    def transform(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (len(archs) x len(names)); `costs` (len(archs) x len(self.costs)) may
        be passed when already computed."""
        enc = self.space.encode_many(list(archs), self.encoding).astype(np.float64)
        raw = self._raw_costs(archs, costs)
        return np.concatenate([enc, (raw - self._mean) / self._std], axis=1)


class PredictedAccuracy:
    """A fitted predictor as an accuracy source (`arch -> accuracy`), e.g. the "predicted
    accuracy" objective of a study, or a cheap stand-in for a supernet."""

    def __init__(self, predictor: Predictor, features: ArchFeatures) -> None:
        self.predictor, self.features = predictor, features

    def __call__(self, arch: Arch) -> float:
        return float(self.predictor.predict(self.features.transform([arch]))[0])

    def many(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray(self.predictor.predict(self.features.transform(list(archs))))


def fit_on_archs(
    predictor: Predictor,
    features: ArchFeatures,
    archs: Sequence[Arch],
    accuracy: Sequence[float] | AccuracyFn,
) -> Predictor:
    """Fit `predictor` on archs and their accuracies (a list, or a callable evaluated here)."""
    acc = [accuracy(a) for a in archs] if callable(accuracy) else list(accuracy)
    return predictor.fit(features.transform(archs), np.asarray(acc, dtype=np.float64))


def sample_archs(space: SearchSpace, n: int, rng: RngLike = None) -> list[Arch]:
    """`n` archs with distinct canonical keys (fewer if the space has fewer)."""
    g = as_rng(rng)
    seen: set[str] = set()
    out: list[Arch] = []
    for _ in range(50 * n):
        a = space.sample(g)
        k = space.canonical_key(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
            if len(out) == n:
                break
    return out

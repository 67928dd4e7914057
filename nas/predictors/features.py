"""Archs as predictor inputs (`ArchFeatures`), and the glue between archs and predictors:
fit on archs, a fitted predictor as an accuracy source, distinct archs to fit on."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nas.core.space import Arch, RngLike, SearchSpace, as_rng
from nas.predictors.base import AccuracyFn, Predictor
from nas.predictors.encodings import PathEncoding

__all__ = ["ArchFeatures", "PredictedAccuracy", "fit_on_archs", "sample_archs"]


class ArchFeatures:
    """Turns archs into predictor inputs: the space's encoding, plus free cost features.

    `encoding` is the space's "onehot" or "ordinal", "path" (`PathEncoding`, its vocabulary
    from the archs passed to `fit`), or "onehot+path". `costs` maps a feature name to a function of a list of archs (MACs, a latency model's
    `predict_many`, ...). Cost features are log-transformed (they span orders of magnitude) and
    standardised with statistics taken from the archs passed to `fit` (a pool of candidates,
    not accuracies), so they are free to compute. `groups` labels columns for `GPPredictor`:
    group 0 is the space's encoding, group 1 the cost features, group 2 the path encoding.
    """

    def __init__(
        self,
        space: SearchSpace,
        encoding: str = "onehot",
        costs: Mapping[str, Callable[[Sequence[Arch]], np.ndarray]] | None = None,
    ) -> None:
        base, _, path = encoding.partition("+")
        if encoding == "path":
            base, path = "", "path"
        if path not in ("", "path") or base not in ("", "onehot", "ordinal"):
            raise ValueError(
                f"encoding must be 'onehot', 'ordinal', 'path' or 'onehot+path', got {encoding!r}"
            )
        self.space, self.encoding = space, encoding
        self._base = base
        self.paths = PathEncoding(space) if path else None
        self.costs = dict(costs or {})
        self._mean = np.zeros(len(self.costs))
        self._std = np.ones(len(self.costs))

    def _base_names(self) -> list[str]:
        return self.space.feature_names(self._base) if self._base else []

    @property
    def names(self) -> list[str]:
        paths = self.paths.names if self.paths is not None else []
        return self._base_names() + [f"log_{c}" for c in self.costs] + paths

    @property
    def groups(self) -> list[int]:
        paths = [2] * len(self.paths.vocabulary) if self.paths is not None else []
        return [0] * len(self._base_names()) + [1] * len(self.costs) + paths

    def _raw_costs(self, archs: Sequence[Arch], costs: np.ndarray | None) -> np.ndarray:
        if costs is None:
            cols = [np.asarray(fn(archs), dtype=np.float64) for fn in self.costs.values()]
            costs = np.stack(cols, axis=1) if cols else np.zeros((len(archs), 0))
        return np.log(np.maximum(np.asarray(costs, dtype=np.float64), 1e-12))

    def fit(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> ArchFeatures:
        """Take standardisation statistics of the cost features (and the path vocabulary)
        from `archs` (no accuracy)."""
        if self.paths is not None:
            self.paths.fit(archs)
        raw = self._raw_costs(archs, costs)
        if raw.shape[1]:
            self._mean = raw.mean(0)
            std = raw.std(0)
            self._std = np.where(std > 1e-12, std, 1.0)
        return self

    def transform(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (len(archs) x len(names)); `costs` (len(archs) x len(self.costs)) may
        be passed when already computed."""
        archs = list(archs)
        if self._base:
            enc = self.space.encode_many(archs, self._base).astype(np.float64)
        else:
            enc = np.zeros((len(archs), 0))
        raw = self._raw_costs(archs, costs)
        paths = self.paths.transform(archs) if self.paths is not None else np.zeros((len(archs), 0))
        return np.concatenate([enc, (raw - self._mean) / self._std, paths], axis=1)


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

"""Intervals of test accuracy: a bootstrap over source groups, for one model or a paired difference.

Test images that are augmented copies of one source (the embedded digits give every source five)
are not independent: a model that misreads a source tends to misread its copies. Resampling
images as if they were independent then understates the uncertainty, so the bootstrap here
resamples whole groups (the cluster bootstrap, Davison and Hinkley 1997, section 3.8) and
scores the replicate on every image of the groups drawn. Two models scored on the same images
are resampled together (a paired bootstrap), so what the two share cancels in their difference.
Where no groups are known (image folders, CIFAR), each image is its own group.

The spread between training seeds is a separate source of noise (the test set is fixed, the
model is not); :func:`resolvable_difference` adds the two, as independent errors do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AccuracyInterval",
    "accuracy_interval",
    "difference_interval",
    "resolvable_difference",
    "seed_sd",
]

# Replicates drawn per block: bounds the (replicates x groups) weight matrix for large test sets.
_BLOCK = 256


@dataclass(frozen=True)
class AccuracyInterval:
    """A bootstrap interval of an accuracy (or of a difference of two), as fractions.

    ``estimate`` is the value on the whole test set; ``low`` and ``high`` the percentile
    interval of ``n_boot`` replicates at ``level``; ``se`` their standard deviation; ``groups``
    and ``images`` how many groups (sources) and images the test set holds.
    """

    estimate: float
    low: float
    high: float
    se: float
    level: float
    groups: int
    images: int
    n_boot: int

    @property
    def half_width(self) -> float:
        """Half the interval's width: the ``+-`` to quote beside ``estimate``."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}


def accuracy_interval(
    correct: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
) -> AccuracyInterval:
    """The bootstrap interval of one model's accuracy, resampling ``groups`` (default: images).

    ``correct``: per image, 1 / True where the model is right (any per-image score in [0, 1]
    works); ``groups``: per image, the id of its source (``ImageDataset.groups("test")``).
    """
    values = _per_image(correct, "correct")
    return _bootstrap([values], groups, level, n_boot, seed)


def difference_interval(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
) -> AccuracyInterval:
    """The paired bootstrap interval of ``accuracy(a) - accuracy(b)``, both scored on the same
    images (in the same order): each replicate draws one set of groups for both models."""
    a = _per_image(correct_a, "correct_a")
    b = _per_image(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(
            f"a paired difference needs both models scored on the same images; got {a.size} "
            f"and {b.size} values"
        )
    return _bootstrap([a, b], groups, level, n_boot, seed)


def seed_sd(accuracies: ArrayLike) -> float:
    """The spread between training seeds: the sample standard deviation (``ddof=1``) of one
    model's accuracies over seeds (1-D), or pooled over models (2-D, models x seeds: the root of
    the mean of the models' variances, each model with its own mean)."""
    values = np.asarray(accuracies, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.shape[1] < 2 or not np.all(np.isfinite(values)):
        raise ValueError(
            "seed_sd needs finite accuracies over at least 2 seeds, as a 1-D array (one model) "
            f"or a 2-D array (models x seeds); got shape {values.shape}"
        )
    return float(math.sqrt(values.var(axis=1, ddof=1).mean()))


def resolvable_difference(
    paired_half_width: float, seed_sd_of_difference: float, level: float = 0.95
) -> float:
    """The half-width a difference must exceed to be resolvable: test-set noise and training
    noise added as independent errors, ``sqrt(h^2 + (z * s)^2)``.

    ``paired_half_width``: half-width of :func:`difference_interval` (test-set sampling);
    ``seed_sd_of_difference``: the seed-to-seed standard deviation of the difference itself
    (``sqrt(2) * seed_sd`` for two models trained in separate runs); ``z`` is the normal
    quantile of ``level``, the level the half-width was taken at.
    """
    if paired_half_width < 0 or seed_sd_of_difference < 0:
        raise ValueError(
            "paired_half_width and seed_sd_of_difference must be >= 0; got "
            f"{paired_half_width!r} and {seed_sd_of_difference!r}"
        )
    z = _z(level)
    return float(math.hypot(paired_half_width, z * seed_sd_of_difference))


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _per_image(values: ArrayLike, what: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1 or out.size == 0 or not np.all(np.isfinite(out)):
        raise ValueError(
            f"{what} must be a non-empty 1-D array of finite per-image scores; got shape "
            f"{out.shape}"
        )
    return out


def _bootstrap(
    models: list[np.ndarray],
    groups: ArrayLike | None,
    level: float,
    n_boot: int,
    seed: int | np.random.Generator,
) -> AccuracyInterval:
    """Percentile interval of ``mean(models[0]) [- mean(models[1])]`` over replicates that draw
    the groups with replacement (one draw for every model)."""
    _z(level)
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2; got {n_boot!r}")
    n = models[0].size
    if groups is None:
        inverse = np.arange(n)
    else:
        ids = np.asarray(groups)
        if ids.shape != (n,):
            raise ValueError(f"groups must give one id per image ({n}); got shape {ids.shape}")
        inverse = np.unique(ids, return_inverse=True)[1].ravel()
    counts = np.bincount(inverse).astype(np.float64)  # images per group
    score = models[0] if len(models) == 1 else models[0] - models[1]
    sums = np.bincount(inverse, weights=score, minlength=counts.size)  # score per group
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    k = counts.size
    replicates = np.empty(n_boot)
    for start in range(0, n_boot, _BLOCK):
        m = min(_BLOCK, n_boot - start)
        # how often each group is drawn in each replicate: m x k, every row sums to k
        draws = rng.multinomial(k, np.full(k, 1.0 / k), size=m).astype(np.float64)
        replicates[start : start + m] = (draws @ sums) / (draws @ counts)
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return AccuracyInterval(
        estimate=float(score.mean()),
        low=float(low),
        high=float(high),
        se=float(replicates.std(ddof=1)),
        level=level,
        groups=k,
        images=n,
        n_boot=n_boot,
    )

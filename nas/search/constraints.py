"""Budgets of a search: `metric <= bound` or `metric >= bound`, written as text or objects,
and the margin a predicted metric keeps from its bound (`auto_margin`: split-conformal, from the
latency model's held-out error against the device's own figure)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_CONFORMAL_ARCHS", "Constraint", "Margin", "auto_margin", "parse_constraint"]

MIN_CONFORMAL_ARCHS = 30
"""Held-out archs a conformal margin needs; with fewer, the largest ratio seen is used."""


@dataclass(frozen=True)
class Constraint:
    """A budget `metric <= bound` or `metric >= bound`. A `<=` budget on a predicted metric
    may keep a relative `margin`: it holds when `value x (1 + margin) <= bound`."""

    metric: str
    op: str  # "<=" or ">="
    bound: float
    margin: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"a budget's margin is a number >= 0, got {self.margin!r}")
        if self.margin and self.op != "<=":
            raise ValueError(f"a margin applies to '<=' budgets only, not to {self}")

    @property
    def effective_bound(self) -> float:
        """The bound a predicted value meets: `bound / (1 + margin)` for a `<=` budget."""
        return self.bound / (1.0 + self.margin) if self.op == "<=" else self.bound

    def violation(self, value: float) -> float:
        """Optuna's convention: feasible when <= 0."""
        if self.op == "<=":
            return value * (1.0 + self.margin) - self.bound
        return self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z0-9_@.:\-]+)\s*(<=|>=|<|>)\s*([-+0-9.eE_]+)\s*$")


def parse_constraint(text: str) -> tuple[str, str, float]:
    """`"latency_ms@pixel3 <= 20"` -> ("latency_ms@pixel3", "<=", 20.0)."""
    m = _CONSTRAINT_RE.match(text)
    if m is None:
        raise ValueError(
            f"a budget reads 'METRIC <= NUMBER' or 'METRIC >= NUMBER' "
            f"(e.g. 'latency_ms@pixel3 <= 20', 'params <= 2e6', 'accuracy >= 70'), got {text!r}"
        )
    name, op, number = m.groups()
    return name, {"<": "<=", ">": ">="}.get(op, op), float(number)


@dataclass(frozen=True)
class Margin:
    """The margin a budget keeps, and why: `method` is "conformal" (a split-conformal quantile
    of held-out errors), "largest" (fewer held-out archs than a conformal quantile needs: the
    largest error seen), "fixed" (a number the user gave) or "none" (no held-out archs)."""

    value: float
    method: str
    n_heldout: int = 0
    coverage: float = 0.95

    def describe(self) -> str:
        """One sentence for a report: the margin and where it comes from."""
        pct = f"{100 * self.value:.2f} %"
        if self.method == "fixed":
            return f"{pct} (fixed in the config)"
        if self.method == "none":
            return f"{pct}: no held-out archs to measure the latency model's error on"
        if self.method == "largest":
            return (
                f"{pct}: the largest measured / predicted - 1 over {self.n_heldout} held-out "
                f"archs (fewer than the {MIN_CONFORMAL_ARCHS} a conformal quantile needs)"
            )
        return (
            f"{pct}: the split-conformal {100 * self.coverage:.0f} % quantile of measured / "
            f"predicted - 1 over {self.n_heldout} held-out archs, floored at 0"
        )


def auto_margin(
    measured: Sequence[float] | np.ndarray,
    predicted: Sequence[float] | np.ndarray,
    coverage: float = 0.95,
) -> Margin:
    """The margin that keeps `coverage` of archs within budget on the device's own figure.

    With n >= `MIN_CONFORMAL_ARCHS` held-out archs (not used to fit the latency model), the
    split-conformal quantile: the ceil((n + 1) x coverage)-th smallest of measured / predicted
    - 1, which an exchangeable new arch exceeds with probability at most 1 - coverage
    (Vovk et al.; Lei et al. 2018). With fewer, the largest ratio seen. Floored at 0: a model
    that overestimates costs nothing to trust.
    """
    m = np.asarray(measured, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    if m.shape != p.shape:
        raise ValueError(f"one prediction per measurement: got {m.shape} and {p.shape}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage is in (0, 1), got {coverage}")
    if m.size == 0:
        return Margin(0.0, "none", 0, coverage)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(p)) and np.all(p > 0)):
        raise ValueError("a margin needs finite latencies with predictions > 0")
    excess = np.sort(m / p - 1.0)
    n = excess.size
    if n < MIN_CONFORMAL_ARCHS:
        return Margin(max(0.0, float(excess[-1])), "largest", n, coverage)
    k = min(n, math.ceil((n + 1) * coverage))
    return Margin(max(0.0, float(excess[k - 1])), "conformal", n, coverage)

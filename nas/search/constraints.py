"""Budgets of a search: `metric <= bound` or `metric >= bound`, written as text or objects."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Constraint", "parse_constraint"]


@dataclass(frozen=True)
class Constraint:
    """A budget `metric <= bound` or `metric >= bound`."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    def violation(self, value: float) -> float:
        """Optuna's convention: feasible when <= 0."""
        return value - self.bound if self.op == "<=" else self.bound - value

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

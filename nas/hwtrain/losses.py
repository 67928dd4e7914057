"""The cost terms of a hardware-aware loss and the three ways to combine them with the task loss.

- `multiplicative` (FBNet): CE * alpha * log(LAT)^beta. FBNet's LAT is in microseconds, so its
  log is positive; a sub-millisecond latency in ms would give a negative log, so LAT is taken in
  units of ref / e: the factor is alpha * (1 + log(LAT / ref))^beta (1 at the reference, clamped
  above 0), with ref the target (or the uniform distribution's expectation).
- `additive`: CE + lam * LAT / ref.
- `target`: CE + lam * (LAT / T' - 1)^2 with T' = T / (1 + margin): reach T on the device, not
  merely "be fast"; under a budget with a margin, aim below it.

Several devices (or parameters, peak memory) enter as several terms: a weighted mean of the
normalised costs (multiplicative, additive) or one target per term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nas.hwtrain.expected import ExpectedCost

__all__ = ["LOSS_FORMS", "CostTerm", "LossConfig", "hardware_loss"]

LOSS_FORMS = ("multiplicative", "additive", "target")


@dataclass
class CostTerm:
    """One expected cost in the loss: `name` (a device, "params", "peak_memory"), its
    expectation, its weight, and (target form) its target with the margin below it."""

    name: str
    expected: ExpectedCost
    weight: float = 1.0
    target: float | None = None
    margin: float = 0.0
    reference: float = 0.0  # the uniform distribution's expectation, set before training

    @property
    def aim(self) -> float | None:
        """The value the target form steers to: target / (1 + margin)."""
        return None if self.target is None else self.target / (1.0 + self.margin)

    @property
    def scale(self) -> float:
        """What the cost is normalised by: the aim where there is one, else the reference."""
        aim = self.aim
        return aim if aim is not None else self.reference


@dataclass(frozen=True)
class LossConfig:
    form: str = "target"
    alpha: float = 0.2  # FBNet's
    beta: float = 0.6  # FBNet's
    lam: float = 5.0

    def __post_init__(self) -> None:
        if self.form not in LOSS_FORMS:
            raise ValueError(f"loss form must be one of {LOSS_FORMS}, got {self.form!r}")
        for name in ("alpha", "beta", "lam"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loss {name} must be > 0, got {getattr(self, name)!r}")


def hardware_loss(
    ce: Tensor, terms: list[CostTerm], config: LossConfig
) -> tuple[Tensor, dict[str, float]]:
    """The loss of one architecture step and, per term, its expected cost (for the log)."""
    values = {t.name: t.expected() for t in terms}
    logged = {k: float(v.detach()) for k, v in values.items()}
    if not terms:
        return ce, logged
    weights = sum(t.weight for t in terms)
    norm = torch.stack([t.weight * values[t.name] / t.scale for t in terms]).sum() / weights
    if config.form == "multiplicative":
        factor = torch.clamp(1.0 + torch.log(norm), min=1e-3) ** config.beta
        return ce * config.alpha * factor, logged
    if config.form == "additive":
        return ce + config.lam * norm, logged
    penalty = torch.zeros((), dtype=torch.float64)
    for t in terms:
        ratio = values[t.name] / t.scale
        penalty = penalty + t.weight * ((ratio - 1.0) ** 2 if t.aim is not None else ratio)
    return ce + config.lam * penalty / weights, logged

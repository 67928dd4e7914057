"""Each device tier's subnet: the best arch under its latency budget, chosen without client data.

The rule uses only what the server has without anyone's data: a latency model of each tier's
device (a LUT, a cost model, a calibrated predictor: any `LatencyModel`) and the space's free
costs. Among seeded candidates (the extremes and a random sample) it keeps those whose
predicted latency meets the budget and picks the one with the most MACs (ties: the faster),
as accuracy grows with compute across a supernet's subnets (Once-for-All's accuracy-vs-MACs
fronts); or, with ``rule="depth"``, the deepest one (the most blocks, summed over the arch's
``*.depth`` choices), most MACs among equals: a data-free preference for depth over width,
since on small budgets the deep, narrow sub-models of HeteroFL's widths learned more than the
shallow, wide subnets with more MACs (issue 21's benchmark). A budget no candidate meets is an
error naming the fastest candidate's latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nas.core.elastic import Supernet
from nas.core.protocols import LatencyModel
from nas.core.space import Arch, SearchSpace
from nas.federated.spec import TierSpec

__all__ = ["TIER_RULES", "TierBudget", "arch_depth", "candidate_archs", "choose_tiers"]

TIER_RULES = ("macs", "depth")


@dataclass(frozen=True)
class TierBudget:
    """A tier as a user states it: a name, a device's latency model, a budget, a client count."""

    name: str
    latency: LatencyModel
    budget_ms: float
    clients: int

    def __post_init__(self) -> None:
        if not self.budget_ms > 0:
            raise ValueError(f"tier {self.name!r}: budget_ms must be > 0; got {self.budget_ms!r}")


def candidate_archs(space: SearchSpace, count: int, seed: int) -> list[Arch]:
    """The largest and smallest arch (where the supernet says) and `count` seeded samples,
    without repeats, in a fixed order."""
    found: dict[str, Arch] = {}
    supernet = space.supernet()
    extremes = (
        [supernet.largest_arch(), supernet.smallest_arch()]
        if isinstance(supernet, Supernet)
        else []
    )
    rng = np.random.default_rng(seed)
    for arch in [*extremes, *(space.sample(rng=rng) for _ in range(count))]:
        found.setdefault(space.key(arch), space.validate(arch))
    return list(found.values())


def arch_depth(arch: Arch) -> int:
    """The arch's blocks: its ``*.depth`` choices summed (0 for a space without them)."""
    return sum(int(v) for k, v in arch.items() if k == "depth" or k.endswith(".depth"))


def choose_tiers(
    space: SearchSpace,
    budgets: Sequence[TierBudget],
    candidates: int = 500,
    seed: int = 0,
    rule: str = "macs",
    min_macs_ratio: float | None = None,
) -> tuple[TierSpec, ...]:
    """One `TierSpec` per budget: the arch with the most MACs (`rule` "macs"), or the deepest
    with the most MACs among equals ("depth"), whose predicted latency on the tier's device
    meets its budget (the prediction is recorded in the tier's name-free fields).

    With `min_macs_ratio` r, tiers are also kept apart in compute: taken from the largest
    budget down, each tier's arch has at most 1/r of the MACs of the tier above it (a small
    budget's subnet would otherwise take nearly the MACs of the next one where the device's
    fixed costs dominate its latency); a tier no candidate can keep apart is an error."""
    if rule not in TIER_RULES:
        raise ValueError(f"the tier rule must be one of {TIER_RULES}; got {rule!r}")
    if min_macs_ratio is not None and not min_macs_ratio >= 1.0:
        raise ValueError(f"min_macs_ratio must be >= 1 (or None); got {min_macs_ratio!r}")
    archs = candidate_archs(space, candidates, seed)
    macs = np.array([space.cost(a).macs for a in archs], dtype=np.float64)
    depth = np.array([arch_depth(a) if rule == "depth" else 0 for a in archs], dtype=np.int64)
    chosen: dict[int, TierSpec] = {}
    above: float | None = None  # MACs of the tier with the next larger budget
    for index in sorted(range(len(budgets)), key=lambda j: -budgets[j].budget_ms):
        b = budgets[index]
        latency_ms = np.asarray(b.latency.predict_many(space, archs), dtype=np.float64)
        feasible = np.flatnonzero(latency_ms <= b.budget_ms)
        if len(feasible) == 0:
            raise ValueError(
                f"tier {b.name!r}: no arch of {space.name!r} meets {b.budget_ms:g} ms on "
                f"{b.latency.device} (the fastest of {len(archs)} candidates takes "
                f"{latency_ms.min():.4g} ms); raise the budget"
            )
        if min_macs_ratio is not None and above is not None:
            cap = above / min_macs_ratio
            feasible = feasible[macs[feasible] <= cap * (1 + 1e-9)]
            if len(feasible) == 0:
                raise ValueError(
                    f"tier {b.name!r}: no arch under {b.budget_ms:g} ms has at most 1/"
                    f"{min_macs_ratio:g} of the tier above's {above / 1e6:.3g} MMACs (the "
                    f"fewest of {len(archs)} candidates: {macs.min() / 1e6:.3g} MMACs); lower "
                    "min_macs_ratio or use fewer tiers"
                )
        best = min(feasible, key=lambda i: (-depth[i], -macs[i], latency_ms[i], i))
        above = float(macs[best])
        chosen[index] = TierSpec(
            b.name,
            b.clients,
            arch=dict(archs[best]),
            device=b.latency.device,
            budget_ms=b.budget_ms,
            predicted_ms=float(latency_ms[best]),
            mmacs=float(macs[best] / 1e6),
        )
    return tuple(chosen[i] for i in range(len(budgets)))

"""Tiers from devices: the most MACs under each budget, from latency and cost alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import nas
from nas.federated import TierBudget, candidate_archs, choose_tiers


class _MacsLatency:
    """A stand-in device: 1 ms per 10 MMACs (any LatencyModel works)."""

    device = "macs-device"
    dtype = "fp32"

    def predict_arch(self, space: nas.SearchSpace, arch: Mapping[str, Any]) -> float:
        return space.cost(arch).macs / 1e7

    def predict_many(
        self, space: nas.SearchSpace, archs: Sequence[Mapping[str, Any]]
    ) -> np.ndarray:
        return np.array([self.predict_arch(space, a) for a in archs])


def test_each_tier_gets_the_most_macs_under_its_budget() -> None:
    space = nas.get_space("tiny")
    dev = _MacsLatency()
    archs = candidate_archs(space, 60, seed=0)
    lat = dev.predict_many(space, archs)
    budgets = [float(np.quantile(lat, q)) for q in (0.9, 0.5, 0.1)]
    tiers = choose_tiers(space, [TierBudget(f"t{i}", dev, b, 2) for i, b in enumerate(budgets)], 60)
    for tier, budget in zip(tiers, budgets, strict=True):
        assert tier.predicted_ms is not None and tier.predicted_ms <= budget
        best = max(space.cost(a).macs for a, ms in zip(archs, lat, strict=True) if ms <= budget)
        assert tier.arch is not None and space.cost(tier.arch).macs == best
        assert tier.device == "macs-device" and tier.clients == 2
    assert tiers[0].mmacs > tiers[1].mmacs > tiers[2].mmacs  # type: ignore[operator]
    alone = choose_tiers(space, [TierBudget("t", dev, budgets[1], 1)], 60)
    assert alone[0].arch == tiers[1].arch  # a tier does not depend on the others


def test_a_budget_no_arch_meets_names_the_fastest() -> None:
    space = nas.get_space("tiny")
    dev = _MacsLatency()
    fastest = min(dev.predict_many(space, candidate_archs(space, 20, seed=0)))
    with pytest.raises(
        ValueError, match=r"no arch of 'tiny' meets .*the fastest of \d+ candidates"
    ):
        choose_tiers(space, [TierBudget("watch", dev, fastest * 0.99, 3)], 20)
    with pytest.raises(ValueError, match="budget_ms must be > 0"):
        TierBudget("watch", dev, 0.0, 3)


def test_the_depth_rule_takes_the_deepest_arch_then_the_most_macs() -> None:
    from nas.federated import arch_depth

    space = nas.get_space("tiny")
    dev = _MacsLatency()
    archs = candidate_archs(space, 60, seed=0)
    lat = dev.predict_many(space, archs)
    budget = float(np.quantile(lat, 0.5))
    (macs,) = choose_tiers(space, [TierBudget("t", dev, budget, 2)], 60)
    (deep,) = choose_tiers(space, [TierBudget("t", dev, budget, 2)], 60, rule="depth")
    fits = [a for a, ms in zip(archs, lat, strict=True) if ms <= budget]
    most = max(arch_depth(a) for a in fits)
    assert deep.arch is not None and macs.arch is not None
    assert arch_depth(deep.arch) == most > arch_depth(macs.arch)
    assert space.cost(deep.arch).macs == max(
        space.cost(a).macs for a in fits if arch_depth(a) == most
    )
    with pytest.raises(ValueError, match="tier rule"):
        choose_tiers(space, [TierBudget("t", dev, budget, 2)], 60, rule="params")


class _FixedCostLatency(_MacsLatency):
    """A device whose fixed per-network cost dominates small nets (as pixel3-emulated's)."""

    def predict_arch(self, space: nas.SearchSpace, arch: Mapping[str, Any]) -> float:
        return 1.0 + space.cost(arch).macs / 1e7


def test_a_macs_ratio_keeps_tiers_apart_in_the_order_given() -> None:
    space = nas.get_space("tiny")
    dev = _FixedCostLatency()
    archs = candidate_archs(space, 60, seed=0)
    lat = dev.predict_many(space, archs)
    budgets = [float(np.quantile(lat, q)) for q in (0.3, 0.95, 0.6)]  # not in budget order
    given = [TierBudget(f"t{i}", dev, b, 2) for i, b in enumerate(budgets)]
    free = choose_tiers(space, given, 60)
    kept = choose_tiers(space, given, 60, min_macs_ratio=2.0)
    assert [t.name for t in kept] == ["t0", "t1", "t2"]
    assert kept[1].arch == free[1].arch  # the largest budget is not held back
    assert [t.arch for t in kept] != [t.arch for t in free]  # the ratio did bind here
    big, mid, small = (t.mmacs for t in (kept[1], kept[2], kept[0]))
    assert big is not None and mid is not None and small is not None
    assert big >= 2 * mid * (1 - 1e-9) and mid >= 2 * small * (1 - 1e-9)
    for tier, budget in zip(kept, budgets, strict=True):
        assert tier.predicted_ms is not None and tier.predicted_ms <= budget
    # the most MACs that keep the ratio: no candidate under the budget and the cap has more
    cap = mid / 2 * 1e6
    fits = [space.cost(a).macs for a, ms in zip(archs, lat, strict=True) if ms <= budgets[0]]
    assert small * 1e6 == pytest.approx(max(m for m in fits if m <= cap * (1 + 1e-9)))
    with pytest.raises(ValueError, match=r"at most 1/50 of the tier above"):
        choose_tiers(space, given, 60, min_macs_ratio=50.0)
    with pytest.raises(ValueError, match="min_macs_ratio must be >= 1"):
        choose_tiers(space, given, 60, min_macs_ratio=0.5)

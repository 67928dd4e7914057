"""The federated benchmark's tier budgets, and what the width-only (HeteroFL) models cost.

HeteroFL's rows scale one fixed arch to 1, 1/2 and 1/4 of its width; the tiers' subnets are
picked under latency budgets on `pixel3-emulated`'s cost model. A narrow deep network is not
free on that model (every layer pays its launch and memory costs), so a width-only model may
miss the tier's budget. `width_model_ms` prices each width by tracing the scaled network
(`nas.federated.width_scaled`) into layer specs, as the cost model prices any network.
`tier_budgets` gives the budgets of a run: `space` (the largest subnet's latency, the
smallest's, and their geometric mean: the rows committed before session 14) or `width` (each
tier's budget is its width-only model's latency, so both rows meet the same budgets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nas.core.layers import trace_layer_specs
from nas.federated import width_scaled

__all__ = ["BUDGET_RULES", "WIDTHS", "tier_budgets", "width_model_ms"]

WIDTHS = (1.0, 0.5, 0.25)  # HeteroFL's ratios of the fast, mid and slow tiers
BUDGET_RULES = ("space", "width")


def width_model_ms(
    space: Any, emulated: Any, arch: Mapping[str, Any], ratios: Sequence[float] = WIDTHS
) -> list[float]:
    """The predicted latency (ms, fp32) of `arch`'s network at each HeteroFL width ratio, on
    the emulated device (its layer costs plus its network overhead)."""
    model = space.build(arch)
    out = []
    for r in ratios:
        with width_scaled(model, float(r)):
            specs = trace_layer_specs(model, tuple(space.input_shape(dict(arch))))
        out.append(sum(emulated.layer_ms(s) for s in specs) + emulated.network_overhead_ms())
    return [float(x) for x in out]


def tier_budgets(
    rule: str, space: Any, latency: Any, archs: Sequence[Mapping[str, Any]]
) -> tuple[float, float, float]:
    """The fast, mid and slow budgets (ms) under `rule`, from the candidate `archs` priced by
    `latency` (a `CostModelPredictor`: the width rule prices the widths on its device)."""
    if rule not in BUDGET_RULES:
        raise ValueError(f"budget rule must be one of {BUDGET_RULES}; got {rule!r}")
    lat = np.asarray(latency.predict_many(space, archs), dtype=np.float64)
    if rule == "space":
        return float(lat.max()), float(np.sqrt(lat.max() * lat.min())), float(lat.min()) * 1.0001
    largest = archs[int(np.argmax(lat))]
    fast, mid, slow = width_model_ms(space, latency.emulated, largest)
    return fast * 1.0001, mid * 1.0001, slow * 1.0001

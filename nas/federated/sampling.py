"""FjORD-style tier sampling in a client: each local step trains one nested sub-model at or below
the client's own (Horvath et al., NeurIPS 2021, ordered dropout; here over supernet subnets too).

A client of a fast tier then also trains the slower tiers' sub-models on its data, so the
elements every tier shares learn from every client as each tier uses them. Only tiers whose
sub-model is nested in the client's own (every element they hold, the client's own sub-model
holds too) are sampled: a step then costs at most the client's own sub-model (the device
budget holds), and the client sends and receives exactly its own tier's elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nas.federated.family import SubModelFamily, Tier

__all__ = ["TIER_SAMPLING", "client_sub_models", "nested_tiers", "step_tier"]

#: "own": a client trains its own tier's sub-model every step (HeteroFL, the old behaviour);
#: "nested": each step one of the nested tiers at or below its own, uniformly (FjORD);
#: "sandwich": each step its own tier and the smallest nested one, gradients summed (a step
#: then costs its own tier plus the smallest: over the tier's budget by that much)
TIER_SAMPLING = ("own", "nested", "sandwich")


def _nested(inner: dict[str, torch.Tensor], outer: dict[str, torch.Tensor]) -> bool:
    return all(bool((inner[k] <= outer[k]).all()) for k in outer)


def nested_tiers(family: SubModelFamily, tiers: Sequence[Tier], own: int) -> list[Tier]:
    """The sub-models a client of `tiers[own]` samples from: its own first, then each other
    tier whose elements its own holds (a distinct sub-model once: same masks, one entry), in
    the order of `tiers`."""
    mine = family.masks(tiers[own])
    found: list[Tier] = [tiers[own]]
    seen = [mine]
    for i, tier in enumerate(tiers):
        if i == own:
            continue
        masks = family.masks(tier)
        if not _nested(masks, mine):
            continue
        if any(all(torch.equal(masks[k], s[k]) for k in masks) for s in seen):
            continue
        found.append(tier)
        seen.append(masks)
    return found


def step_tier(seed: int, step: int, count: int) -> int:
    """Which of `count` sub-models local step `step` trains: uniform, from the stream of
    (`seed`, `step`), where `seed` is the client's round seed (run seed, round, partition), so
    a rerun of the round repeats every choice."""
    if count < 1:
        raise ValueError(f"a client samples among >= 1 sub-models; got {count}")
    if count == 1:
        return 0
    return int(np.random.default_rng([seed, step]).integers(count))


def client_sub_models(
    family: SubModelFamily, tiers: Sequence[Tier], own: int, mode: str
) -> tuple[list[Tier], bool]:
    """What a client of `tiers[own]` trains under `mode` (one of `TIER_SAMPLING`): the
    sub-models besides its own (`train_local`'s `smaller`), and whether every step trains all
    of them (the sandwich) rather than one drawn per step."""
    if mode not in TIER_SAMPLING:
        raise ValueError(f"tier sampling must be one of {TIER_SAMPLING}; got {mode!r}")
    if mode == "own":
        return [], False
    rest = nested_tiers(family, tiers, own)[1:]
    if mode == "nested" or not rest:
        return rest, False

    def held(tier: Tier) -> int:
        return sum(int(m.sum()) for m in family.masks(tier).values())

    return [min(rest, key=held)], True

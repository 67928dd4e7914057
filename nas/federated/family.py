"""The two kinds of sub-model a federated run shares: supernet subnets, and HeteroFL widths.

A family makes the full-size model, runs it as one tier's sub-model (`activated`), and says
which elements that sub-model holds (`masks`). `SupernetFamily` slices a weight-sharing
supernet by arch (width, depth, kernel, expansion); `WidthFamily` slices one fixed arch's
network by HeteroFL's uniform channel ratio (Diao et al., ICLR 2021). FedAvg of one subnet is
the supernet family with the same arch on every client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from nas.core.elastic import Supernet
from nas.core.space import SearchSpace
from nas.federated.slices import Masks, supernet_masks, width_masks, width_scaled

__all__ = ["SubModelFamily", "SupernetFamily", "Tier", "WidthFamily"]

Tier = Mapping[str, Any]  # {"arch": {...}} for a subnet, {"width": 0.5} for a HeteroFL ratio


class SubModelFamily(Protocol):
    """What the apps need of a family of sub-models."""

    def full_model(self, seed: int) -> nn.Module:
        """The full-size model, initialised from `seed` (the server's starting weights)."""
        ...

    def activated(self, model: nn.Module, tier: Tier) -> Any:
        """A context manager in which `model`'s forward is `tier`'s sub-model."""
        ...

    def masks(self, tier: Tier) -> Masks:
        """Per state-dict entry, the elements `tier`'s sub-model holds."""
        ...

    def input_shape(self, tier: Tier) -> tuple[int, ...]:
        """C x H x W of the images `tier`'s sub-model takes."""
        ...


def _as_supernet(model: nn.Module) -> Supernet:
    if not isinstance(model, Supernet):
        raise TypeError(f"space.supernet() gave a {type(model).__name__}, not a Supernet")
    return model


class SupernetFamily:
    """Subnets of `space`'s supernet; a tier names its arch."""

    def __init__(self, space: SearchSpace, make_supernet: Callable[[], Supernet] | None = None):
        self.space = space
        self._make = make_supernet or (lambda: _as_supernet(space.supernet()))
        self._masks: dict[str, Masks] = {}

    def full_model(self, seed: int) -> Supernet:
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's stream untouched
            torch.manual_seed(seed)
            return self._make()

    @contextmanager
    def activated(self, model: nn.Module, tier: Tier) -> Iterator[nn.Module]:
        if not isinstance(model, Supernet):
            raise TypeError(f"a supernet family activates a Supernet, got {type(model).__name__}")
        with model.using(tier["arch"]):
            yield model

    def masks(self, tier: Tier) -> Masks:
        key = self.space.key(tier["arch"])
        if key not in self._masks:
            self._masks[key] = supernet_masks(self._make(), tier["arch"])
        return self._masks[key]

    def input_shape(self, tier: Tier) -> tuple[int, ...]:
        return tuple(self.space.input_shape(dict(tier["arch"])))


class WidthFamily:
    """One arch of `space` at HeteroFL's width ratios; a tier names its ratio."""

    def __init__(self, space: SearchSpace, arch: Mapping[str, Any]):
        self.space = space
        self.arch = space.validate(arch)
        self._masks: dict[float, Masks] = {}

    def full_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.space.build(self.arch)

    @contextmanager
    def activated(self, model: nn.Module, tier: Tier) -> Iterator[nn.Module]:
        with width_scaled(model, float(tier["width"])):
            yield model

    def masks(self, tier: Tier) -> Masks:
        ratio = float(tier["width"])
        if ratio not in self._masks:
            self._masks[ratio] = width_masks(self.full_model(0), ratio, self.input_shape(tier))
        return self._masks[ratio]

    def input_shape(self, tier: Tier) -> tuple[int, ...]:
        return tuple(self.space.input_shape(self.arch))

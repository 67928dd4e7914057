"""A toy space and supernet for the hardware-aware training tests: one mixed op, one elastic
width, an input resolution, and (optionally) a dim the supernet ignores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from nas.core.elastic import ElasticConv2d, ElasticLinear, MixedOp, Supernet, active_state_dict
from nas.core.space import Arch, Choice, SearchSpace

__all__ = ["DeadDimSpace", "ToyNet", "ToySpace"]


class ToySpace(SearchSpace):
    name = "toy"
    dims: ClassVar[Mapping[str, Choice]] = {
        "op": Choice("conv", "skip"),
        "w": Choice(4, 8),
        "res": Choice(8, 16),
    }

    def input_shape(self, arch: Mapping[str, Any]) -> tuple[int, int, int]:
        r = int(arch["res"])
        return (3, r, r)

    def supernet(self) -> ToyNet:
        return ToyNet(self)


class DeadDimSpace(ToySpace):
    dims: ClassVar[Mapping[str, Choice]] = {**ToySpace.dims, "dead": Choice(0, 1)}


class ToyNet(Supernet):
    def __init__(self, space: ToySpace) -> None:
        super().__init__(space)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.op = MixedOp({"conv": nn.Conv2d(4, 4, 3, padding=1), "skip": nn.Identity()})
        self.wide = ElasticConv2d(4, 8, (1,))
        self.head = ElasticLinear(8, 3)
        self.set_arch(self.largest_arch())

    def largest_arch(self) -> Arch:
        return {
            k: c.values[0] if k == "op" else max(c.values)
            for k, c in self.space.dimensions().items()
        }

    def _configure(self, arch: Arch) -> None:
        self.op.choose(str(arch["op"]))
        self.wide.configure(4, int(arch["w"]))
        self.head.configure(int(arch["w"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.wide(torch.relu(self.op(self.stem(x))))
        return self.head(y.mean((2, 3)))

    def _subnet_state(self) -> dict[str, torch.Tensor]:
        return active_state_dict(self)

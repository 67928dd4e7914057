"""`nb201`: the NAS-Bench-201 cell space (Dong & Yang, ICLR 2020) and its CIFAR network.

A cell is a 4-node DAG with 6 edges, each one of 5 ops; 5^6 = 15,625 cells. The network is the
benchmark's: 3x3 stem (C=16), three stages of N=5 cells (C = 16, 32, 64) joined by ResNet
reduction blocks, BN-ReLU, global pool, linear. Archs read and write the benchmark's
`arch_str` (`|nor_conv_3x3~0|+|...`) and its index order (the benchmark shuffled the product
order with Python's `random.seed(88)`; rebuilt here, checked against all 15,625 rows of the
published table).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from functools import lru_cache, partial
from typing import Any, ClassVar

import torch
from torch import nn

from nas.core.elastic import MixedOp, Supernet, active_state_dict
from nas.core.layers import LayerSpec
from nas.core.space import Arch, Choice, InvalidArchError, SearchSpace

__all__ = [
    "DEGENERATE",
    "EDGES",
    "EDGE_KEYS",
    "N_ARCHS",
    "OPS",
    "Cell",
    "Head",
    "NB201Net",
    "NB201Space",
    "NB201Supernet",
    "OneShotCell",
    "ReLUConvBN",
    "ResNetReduction",
    "Zero",
    "make_op",
    "stem",
]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (to, from) of the six edges, in arch_str order
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
EDGE_KEYS = tuple(f"{j}<-{i}" for j, i in EDGES)
N_ARCHS = len(OPS) ** len(EDGES)
DEGENERATE = "degenerate"  # canonical key of cells whose output is cut off from the input


@lru_cache(maxsize=1)
def _index_order() -> tuple[tuple[str, ...], ...]:
    archs = list(itertools.product(OPS, repeat=len(EDGES)))
    random.Random(88).shuffle(archs)  # the benchmark's own order (see module docstring)
    return tuple(archs)


@lru_cache(maxsize=1)
def _index_of() -> dict[tuple[str, ...], int]:
    return {ops: i for i, ops in enumerate(_index_order())}


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(op: str, channels: int) -> nn.Module:
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NB201 op {op!r}; valid: {list(OPS)}")


class Cell(nn.Module):
    def __init__(self, ops: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, 4):
            total: torch.Tensor | None = None
            for e, (to, i) in enumerate(EDGES):
                if to == j:
                    y = self.edges[e](nodes[i])
                    total = y if total is None else total + y
            assert total is not None
            nodes.append(total)
        return nodes[3]


class ResNetReduction(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Head(nn.Sequential):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(channels, num_classes),
        )


def stem(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


class NB201Net(nn.Module):
    def __init__(self, ops: tuple[str, ...], channels: int, cells: int, num_classes: int) -> None:
        super().__init__()
        self.stem = stem(channels)
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetReduction(c, c * 2))
                c *= 2
            layers += [Cell(ops, c) for _ in range(cells)]
        self.cells = nn.Sequential(*layers)
        self.head = Head(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))  # cells: N x 4C x 8 x 8


class NB201Space(SearchSpace):
    name = "nb201"
    dims: ClassVar[Mapping[str, Choice]] = {k: Choice(*OPS) for k in EDGE_KEYS}
    default_input_shape = (3, 32, 32)

    def __init__(self, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10) -> None:
        super().__init__()
        self.channels, self.cells_per_stage, self.num_classes = (
            channels,
            cells_per_stage,
            num_classes,
        )

    # -- the benchmark's notation ------------------------------------------------------------
    @staticmethod
    def ops(arch: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(arch[k]) for k in EDGE_KEYS)

    def to_str(self, arch: Mapping[str, Any]) -> str:
        o = self.ops(self.validate(arch))
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    def from_str(self, arch_str: str) -> Arch:
        nodes = arch_str.strip().strip("|").split("|+|") if isinstance(arch_str, str) else []
        ops: list[str] = []
        problems = len(nodes) != 3
        for j, node in enumerate(nodes, start=1):
            edges = node.strip("|").split("|")
            if len(edges) != j:
                problems = True
                break
            for i, edge in enumerate(edges):
                op, _, src = edge.partition("~")
                if src != str(i) or op not in OPS:
                    problems = True
                ops.append(op)
        if problems or len(ops) != 6:
            raise InvalidArchError(
                f"not a NAS-Bench-201 arch_str: {arch_str!r}; expected the form "
                "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' with op in " + ", ".join(OPS)
            )
        return dict(zip(EDGE_KEYS, ops, strict=True))

    def to_index(self, arch: Mapping[str, Any]) -> int:
        return _index_of()[self.ops(self.validate(arch))]

    def from_index(self, index: int) -> Arch:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < N_ARCHS:
            raise InvalidArchError(
                f"NAS-Bench-201 index must be an int in [0, {N_ARCHS - 1}], got {index!r}"
            )
        return dict(zip(EDGE_KEYS, _index_order()[index], strict=True))

    def key(self, arch: Mapping[str, Any]) -> str:
        return self.to_str(arch)

    def from_key(self, key: str) -> Arch:
        return self.from_str(key)

    # -- isomorphism -------------------------------------------------------------------------
    def live_edges(self, arch: Mapping[str, Any]) -> list[tuple[int, int, str]]:
        """Edges (to, from, op) that carry signal from the input to the output."""
        ops = self.ops(self.validate(arch))
        edges = [(j, i, op) for (j, i), op in zip(EDGES, ops, strict=True) if op != "none"]
        reach = {0}
        for j, i, _ in sorted(edges):  # edges sorted by target node: topological
            if i in reach:
                reach.add(j)
        reaches_out = {3}
        for j, i, _ in sorted(edges, reverse=True):
            if j in reaches_out:
                reaches_out.add(i)
        return [(j, i, op) for j, i, op in edges if i in reach and j in reaches_out]

    def is_degenerate(self, arch: Mapping[str, Any]) -> bool:
        """True when every path from input to output passes a `none` edge."""
        return self.canonical_key(arch) == DEGENERATE

    def canonical_key(self, arch: Mapping[str, Any]) -> str:
        """Same for cells that compute the same function.

        Each node is written as the expression it computes: a sorted sum (addition commutes) of
        `op(source)` terms, where `skip_connect` passes its source's expression through and a
        `none` edge, or a source that is zero, contributes nothing. So dead edges, swapped
        intermediate nodes and skip chains all collapse; a cell whose output is zero is
        `degenerate`.
        """
        ops = self.ops(self.validate(arch))
        expr: dict[int, str] = {0: "x"}
        for j in range(1, 4):
            terms = []
            for (to, i), op in zip(EDGES, ops, strict=True):
                if to != j or op == "none" or not expr[i]:
                    continue
                terms.append(expr[i] if op == "skip_connect" else f"{op}({expr[i]})")
            expr[j] = "+".join(sorted(terms))
        return expr[3] or DEGENERATE

    def inactive_keys(self, arch: Mapping[str, Any]) -> set[str]:
        return set()

    # -- the network -------------------------------------------------------------------------
    def block_specs(self, arch: Mapping[str, Any]) -> list[LayerSpec]:
        """Traced per cell (and fixed block) and composed: the same specs as tracing `build`."""
        ops = self.ops(self.validate(arch))
        c, (_, h, w) = self.channels, self.default_input_shape
        specs = list(self.traced_block(("stem", c), partial(stem, c), (3, h, w)))
        for stage in range(3):
            if stage > 0:
                c_in = c
                specs += self.traced_block(
                    ("reduction", c_in),
                    partial(ResNetReduction, c_in, 2 * c_in),
                    (c_in, h, w),
                )
                c, h, w = 2 * c, h // 2, w // 2
            cell = self.traced_block(("cell", ops, c), partial(Cell, ops, c), (c, h, w))
            specs += cell * self.cells_per_stage
        specs += self.traced_block(
            ("head", c, self.num_classes), partial(Head, c, self.num_classes), (c, h, w)
        )
        return specs

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        return NB201Net(
            self.ops(self.validate(arch)), self.channels, self.cells_per_stage, self.num_classes
        )

    def proxy_build(self, arch: Mapping[str, Any]) -> nn.Module:
        """8 channels and one cell per stage: synflow on it takes milliseconds per arch, and
        the cell (the only thing that differs between archs) is the same."""
        return NB201Net(self.ops(self.validate(arch)), 8, 1, self.num_classes)

    def supernet(self) -> NB201Supernet:
        """The one-shot network: every edge of every cell holds all 5 candidate ops."""
        return NB201Supernet(self)


class OneShotCell(Cell):
    """A `Cell` whose every edge is a `MixedOp` of all candidate ops (same forward)."""

    def __init__(self, channels: int) -> None:
        nn.Module.__init__(self)
        self.edges = nn.ModuleList(
            MixedOp({op: make_op(op, channels) for op in OPS}) for _ in EDGES
        )

    def choose(self, ops: tuple[str, ...]) -> None:
        for edge, op in zip(self.edges, ops, strict=True):
            assert isinstance(edge, MixedOp)
            edge.choose(op)


class NB201Supernet(Supernet):
    """NB201Net with one-shot cells; all cells share the arch (as in the benchmark)."""

    def __init__(self, space: NB201Space) -> None:
        super().__init__(space)
        c = space.channels
        self.stem = stem(c)
        layers: list[nn.Module] = []
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetReduction(c, c * 2))
                c *= 2
            layers += [OneShotCell(c) for _ in range(space.cells_per_stage)]
        self.cells = nn.Sequential(*layers)
        self.head = Head(c, space.num_classes)
        self.set_arch(self.largest_arch())

    def largest_arch(self) -> Arch:
        return dict.fromkeys(EDGE_KEYS, "nor_conv_3x3")

    def smallest_arch(self) -> Arch:
        """All skips: parameter-free yet not degenerate (all-`none` cells output zero)."""
        return dict.fromkeys(EDGE_KEYS, "skip_connect")

    def _configure(self, arch: Arch) -> None:
        ops = NB201Space.ops(arch)
        for cell in self.cells:
            if isinstance(cell, OneShotCell):
                cell.choose(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x 3 x 32 x 32
        return self.head(self.cells(self.stem(x)))  # cells: N x 4C x 8 x 8

    def _subnet_state(self) -> dict[str, torch.Tensor]:
        return active_state_dict(self)

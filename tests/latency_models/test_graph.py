"""Dead-branch elimination: zero products fold, `+ 0` disappears, unused results go, and a
network whose output is constant folds whole; without zeros nothing changes."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from latency_models.graph import RuntimeSpecs, pruned_layer_specs
from nas.core.layers import trace_layer_specs
from search_spaces import FBNetSpace, NB201Space, TinySpace
from search_spaces.nb201 import EDGES


class TwoBranch(nn.Module):
    def __init__(self, zero_second: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.zero_second = zero_second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = self.b(y)
        if self.zero_second:
            z = z.mul(0.0)  # z's producer is dead
        return self.c(y) + z


def test_zero_branch_is_removed() -> None:
    full = pruned_layer_specs(TwoBranch(False), (4, 8, 8))
    pruned = pruned_layer_specs(TwoBranch(True), (4, 8, 8))
    assert [s.op for s in full] == ["conv", "conv", "conv", "add"]
    assert [(s.op, s.kernel) for s in pruned] == [("conv", 3), ("conv", 3)]


def test_no_zeros_changes_nothing() -> None:
    space = TinySpace()
    arch = space.sample(3)
    expected = trace_layer_specs(lambda: space.build(arch), space.input_shape(arch))
    assert pruned_layer_specs(lambda: space.build(arch), space.input_shape(arch)) == expected
    fb = FBNetSpace()
    fb_arch = fb.sample(1)
    assert RuntimeSpecs()(fb, fb_arch) == fb.layer_specs(fb_arch)


def _reaches_output(space: NB201Space, arch: dict[str, str]) -> collections.Counter[str]:
    ops = space.ops(arch)
    reach = {3}
    for (j, i), op in sorted(zip(EDGES, ops, strict=True), reverse=True):
        if op != "none" and j in reach:
            reach.add(i)
    return collections.Counter(
        op for (j, _), op in zip(EDGES, ops, strict=True) if op != "none" and j in reach
    )


@pytest.mark.parametrize("index", [0, 7, 14, 21, 1852, 7001])
def test_nb201_runtime_specs_keep_edges_that_reach_the_output(index: int) -> None:
    space = NB201Space()
    arch = space.from_index(index)
    specs = RuntimeSpecs()(space, arch)
    if space.is_degenerate(arch):
        assert specs == []  # the output is a constant: the whole network folds
        return
    assert not any(s.op == "mul" for s in specs)
    edges = _reaches_output(space, arch)
    by_kind = collections.Counter((s.op, s.kernel, s.stride) for s in specs)
    fixed = collections.Counter((s.op, s.kernel, s.stride) for s in _fixed_part(space))
    cells = 3 * space.cells_per_stage
    assert by_kind[("conv", 3, 1)] - fixed[("conv", 3, 1)] == cells * edges["nor_conv_3x3"]
    assert by_kind[("conv", 1, 1)] - fixed[("conv", 1, 1)] == cells * edges["nor_conv_1x1"]
    assert by_kind[("avgpool", 3, 1)] == cells * edges["avg_pool_3x3"]


def _fixed_part(space: NB201Space) -> list:  # type: ignore[type-arg]
    all_skip = {k: "skip_connect" for k in space.keys}
    return space.layer_specs(all_skip)


def test_whole_trace_matches_block_composition() -> None:
    space = NB201Space()
    arch = space.from_index(21)
    whole = pruned_layer_specs(lambda: space.build(arch), space.input_shape(arch))
    assert [s.key for s in whole] == [s.key for s in RuntimeSpecs()(space, arch)]


def test_int8_specs_carry_the_dtype() -> None:
    space = NB201Space()
    specs = RuntimeSpecs()(space, space.from_index(21), "int8")
    assert specs and all(s.dtype == "int8" for s in specs)

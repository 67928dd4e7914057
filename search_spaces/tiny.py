"""`tiny`: a small MBConv space for 32x32 inputs whose supernet trains in seconds on 2 cores.

Three stages after a stride-2 stem (16x16 -> 16x16 -> 8x8 -> 4x4); per stage a depth and a
width, per block a kernel and an expansion ratio. Used by tests and the demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from nas.core.blocks import ConvBNAct, MBConv
from nas.core.elastic import ElasticLinear, ElasticMBConv, Supernet, active_state_dict
from nas.core.layers import LayerSpec
from nas.core.space import Arch, Choice, SearchSpace

__all__ = [
    "EXPANDS",
    "KERNELS",
    "MAX_DEPTH",
    "STAGE_STRIDES",
    "STAGE_WIDTHS",
    "STEM_CHANNELS",
    "TinyNet",
    "TinySpace",
    "TinySupernet",
]

STEM_CHANNELS = 16
STAGE_STRIDES = (1, 2, 2)
STAGE_WIDTHS = ((16, 24), (24, 32), (32, 48))
MAX_DEPTH = 2
KERNELS = (3, 5)
EXPANDS = (2, 4)


def _dims() -> dict[str, Choice]:
    dims: dict[str, Choice] = {}
    for s, widths in enumerate(STAGE_WIDTHS):
        dims[f"s{s}.depth"] = Choice(*range(1, MAX_DEPTH + 1))
        dims[f"s{s}.width"] = Choice(*widths)
        for b in range(MAX_DEPTH):
            dims[f"s{s}.b{b}.k"] = Choice(*KERNELS)
            dims[f"s{s}.b{b}.e"] = Choice(*EXPANDS)
    return dims


class _Head(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x).flatten(1))


class TinyNet(nn.Module):
    def __init__(self, arch: Mapping[str, Any], num_classes: int = 10, in_ch: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_ch, STEM_CHANNELS, 3, stride=2, act="relu")
        blocks: list[nn.Module] = []
        c = STEM_CHANNELS
        for s, stride in enumerate(STAGE_STRIDES):
            width = int(arch[f"s{s}.width"])
            for b in range(int(arch[f"s{s}.depth"])):
                e, k = int(arch[f"s{s}.b{b}.e"]), int(arch[f"s{s}.b{b}.k"])
                blocks.append(MBConv(c, width, c * e, k, stride if b == 0 else 1, act="relu"))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = _Head(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))  # blocks: N x C x 4 x 4


class TinySpace(SearchSpace):
    name = "tiny"
    dims: ClassVar[Mapping[str, Choice]] = _dims()
    default_input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def inactive_keys(self, arch: Mapping[str, Any]) -> set[str]:
        return {
            f"s{s}.b{b}.{p}"
            for s in range(len(STAGE_STRIDES))
            for b in range(int(arch[f"s{s}.depth"]), MAX_DEPTH)
            for p in ("k", "e")
        }

    def size(self) -> int:
        per_block = len(KERNELS) * len(EXPANDS)
        per_stage = sum(per_block**d for d in range(1, MAX_DEPTH + 1))
        return (per_stage * 2) ** len(STAGE_STRIDES)

    def block_specs(self, arch: Mapping[str, Any]) -> list[LayerSpec]:
        """Traced per block and composed: the same specs as tracing `build`, in ~1 ms."""
        c_in, h, w = self.default_input_shape
        specs = list(
            self.traced_block(
                ("stem", c_in),
                partial(ConvBNAct, c_in, STEM_CHANNELS, 3, 2, act="relu"),
                (c_in, h, w),
            )
        )
        shape = specs[-1].output_shape
        c = STEM_CHANNELS
        for s, stride in enumerate(STAGE_STRIDES):
            width = int(arch[f"s{s}.width"])
            for b in range(int(arch[f"s{s}.depth"])):
                e, k = int(arch[f"s{s}.b{b}.e"]), int(arch[f"s{s}.b{b}.k"])
                st = stride if b == 0 else 1
                block = partial(MBConv, c, width, c * e, k, st, act="relu")
                specs += self.traced_block(("mbconv", c, width, c * e, k, st), block, shape)
                shape, c = specs[-1].output_shape, width
        specs += self.traced_block(
            ("head", c, self.num_classes), partial(_Head, c, self.num_classes), shape
        )
        return specs

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        return TinyNet(self.validate(arch), self.num_classes, self.default_input_shape[0])

    def supernet(self, transform_kernels: bool = False) -> TinySupernet:
        """The weight-sharing supernet (OFA-style elastic depth, width, kernel, expansion)."""
        return TinySupernet(self, transform_kernels=transform_kernels)


class _ElasticHead(nn.Module):
    def __init__(self, max_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = ElasticLinear(max_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x).flatten(1))  # N x classes


class TinySupernet(Supernet):
    """Max-size `TinyNet`: every block at the largest width, expansion and kernel, sliced per arch.

    Block `b` of stage `s` is `blocks[s * MAX_DEPTH + b]`; a stage of depth d runs its first d.
    """

    def __init__(self, space: TinySpace, transform_kernels: bool = False) -> None:
        super().__init__(space)
        in_ch = space.default_input_shape[0]
        self.stem = ConvBNAct(in_ch, STEM_CHANNELS, 3, stride=2, act="relu")
        blocks: list[nn.Module] = []
        c = STEM_CHANNELS
        for s, stride in enumerate(STAGE_STRIDES):
            width = max(STAGE_WIDTHS[s])
            for b in range(MAX_DEPTH):
                blocks.append(
                    ElasticMBConv(
                        c,
                        width,
                        c * max(EXPANDS),
                        KERNELS,
                        stride if b == 0 else 1,
                        act="relu",
                        transform_kernels=transform_kernels,
                    )
                )
                c = width
        self.blocks = nn.ModuleList(blocks)
        self.head = _ElasticHead(c, space.num_classes)
        self._active: tuple[int, ...] = ()
        self.set_arch(self.largest_arch())

    def _configure(self, arch: Arch) -> None:
        active: list[int] = []
        c = STEM_CHANNELS
        for s in range(len(STAGE_STRIDES)):
            width = int(arch[f"s{s}.width"])
            for b in range(int(arch[f"s{s}.depth"])):
                e, k = int(arch[f"s{s}.b{b}.e"]), int(arch[f"s{s}.b{b}.k"])
                block = self.blocks[s * MAX_DEPTH + b]
                assert isinstance(block, ElasticMBConv)
                block.configure(c, width, c * e, k)
                active.append(s * MAX_DEPTH + b)
                c = width
        self.head.classifier.configure(c)
        self._active = tuple(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x 3 x 32 x 32
        x = self.stem(x)  # N x 16 x 16 x 16
        for i in self._active:
            x = self.blocks[i](x)  # last: N x width x 4 x 4
        return self.head(x)  # N x classes

    def _subnet_state(self) -> dict[str, torch.Tensor]:
        state = active_state_dict(self.stem, "stem.")
        for j, i in enumerate(self._active):
            state.update(active_state_dict(self.blocks[i], f"blocks.{j}."))
        state.update(active_state_dict(self.head, "head."))
        return state

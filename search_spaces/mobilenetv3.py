"""`mobilenetv3`: the Once-for-All MobileNetV3 space (Cai et al., ICLR 2020).

A 3x3 stride-2 stem, a fixed first block, then 5 stages of MBConv blocks with elastic depth
{2,3,4}, kernel {3,5,7} and expansion {3,4,6} per block, SE and h-swish placed as in OFA, and an
elastic input resolution. The width multiplier (1.0 or 1.2, OFA's two released supernets) is a
parameter of the space, not a dimension. Block-level specs use the keys of OFA's released
latency lookup tables (`expanded_conv-input:...`, `Conv`, `Conv_1`, `AvgPool2D`, `Conv_2`,
`Logits`), so those tables can be read as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nas.core.blocks import ConvBNAct, MBConv, conv_out, make_divisible, mbconv_spec
from nas.core.elastic import ElasticMBConv, Supernet, active_state_dict
from nas.core.layers import LayerSpec
from nas.core.space import Arch, Choice, SearchSpace

__all__ = [
    "BASE_WIDTHS",
    "DEPTHS",
    "EXPANDS",
    "KERNELS",
    "MAX_DEPTH",
    "N_STAGES",
    "OFA_RESOLUTIONS",
    "STAGE_ACTS",
    "STAGE_SE",
    "STAGE_STRIDES",
    "WIDTH_MULTS",
    "MobileNetV3",
    "MobileNetV3Space",
    "MobileNetV3Supernet",
]

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "hswish", "hswish", "hswish")
STAGE_SE = (False, True, False, True, True)
N_STAGES = 5
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
MAX_DEPTH = max(DEPTHS)
OFA_RESOLUTIONS = tuple(range(128, 225, 4))
WIDTH_MULTS = (1.0, 1.2)


class MobileNetV3(nn.Module):
    def __init__(self, arch: Mapping[str, Any], widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        stem, first, *stage_widths, final_expand, last = widths
        self.first_conv = ConvBNAct(3, stem, 3, stride=2, act="hswish")
        self.first_block = MBConv(stem, first, stem, 3, 1, act="relu", expand_conv=False)
        blocks: list[nn.Module] = []
        c = first
        for s in range(N_STAGES):
            for b in range(int(arch[f"s{s}.depth"])):
                k, e = int(arch[f"s{s}.b{b}.k"]), int(arch[f"s{s}.b{b}.e"])
                mid = make_divisible(round(c * e), 8)
                stride = STAGE_STRIDES[s] if b == 0 else 1
                blocks.append(
                    MBConv(c, stage_widths[s], mid, k, stride, STAGE_ACTS[s], STAGE_SE[s])
                )
                c = stage_widths[s]
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = ConvBNAct(c, final_expand, 1, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = ConvBNAct(final_expand, last, 1, act="hswish", bn=False)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.first_conv(x))
        x = self.final_expand(self.blocks(x))
        x = self.feature_mix(self.pool(x))  # N x last x 1 x 1
        return self.classifier(x.flatten(1))


class MobileNetV3Space(SearchSpace):
    name = "mobilenetv3"

    def __init__(
        self,
        width_mult: float = 1.0,
        resolutions: Sequence[int] = OFA_RESOLUTIONS,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if width_mult not in WIDTH_MULTS:
            raise ValueError(f"width_mult must be one of {WIDTH_MULTS} (OFA's), got {width_mult}")
        if not resolutions or any(int(r) < 32 for r in resolutions):
            raise ValueError(
                f"resolutions must be a non-empty list of ints >= 32, got {resolutions}"
            )
        self.width_mult = width_mult
        self.resolutions = tuple(int(r) for r in resolutions)
        self.num_classes = num_classes
        w = [make_divisible(b * width_mult, 8) for b in BASE_WIDTHS]
        if width_mult == 1.0:
            w[-1] = BASE_WIDTHS[-1]
        self.widths = tuple(w)

    def dimensions(self) -> dict[str, Choice]:
        dims: dict[str, Choice] = {}
        for s in range(N_STAGES):
            dims[f"s{s}.depth"] = Choice(*DEPTHS)
            for b in range(MAX_DEPTH):
                dims[f"s{s}.b{b}.k"] = Choice(*KERNELS)
                dims[f"s{s}.b{b}.e"] = Choice(*EXPANDS)
        dims["resolution"] = Choice(*self.resolutions)
        return dims

    def inactive_keys(self, arch: Mapping[str, Any]) -> set[str]:
        return {
            f"s{s}.b{b}.{p}"
            for s in range(N_STAGES)
            for b in range(int(arch[f"s{s}.depth"]), MAX_DEPTH)
            for p in ("k", "e")
        }

    def size(self) -> int:
        per_block = len(KERNELS) * len(EXPANDS)
        per_stage = sum(per_block**d for d in DEPTHS)
        return per_stage**N_STAGES * len(self.resolutions)

    def input_shape(self, arch: Mapping[str, Any]) -> tuple[int, int, int]:
        r = int(arch["resolution"])
        return (3, r, r)

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        return MobileNetV3(self.validate(arch), self.widths, self.num_classes)

    def supernet(self, transform_kernels: bool = True) -> MobileNetV3Supernet:
        """OFA's supernet: elastic kernel (with OFA's kernel transformation matrices by default),
        expansion, depth and resolution; export gives `build(arch)` with the sliced weights."""
        return MobileNetV3Supernet(self, transform_kernels=transform_kernels)

    def block_specs(self, arch: Mapping[str, Any]) -> list[LayerSpec]:
        stem, first, *stage_widths, final_expand, last = self.widths
        r = int(arch["resolution"])
        h = conv_out(r, 3, 2)
        specs = [
            LayerSpec(
                op="conv",
                name="Conv",
                input_shape=(3, r, r),
                output_shape=(stem, h, h),
                kernel=3,
                stride=2,
                activation="hswish",
                macs=3 * 9 * stem * h * h,
                params=27 * stem + 2 * stem,
                live_bytes=4 * (3 * r * r + stem * h * h),
            )
        ]
        shape: tuple[int, ...] = (stem, h, h)
        specs.append(mbconv_spec(shape, first, stem, 3, 1, "relu", False, expand_conv=False))
        shape = specs[-1].output_shape
        for s in range(N_STAGES):
            for b in range(int(arch[f"s{s}.depth"])):
                k, e = int(arch[f"s{s}.b{b}.k"]), int(arch[f"s{s}.b{b}.e"])
                mid = make_divisible(round(shape[0] * e), 8)
                stride = STAGE_STRIDES[s] if b == 0 else 1
                spec = mbconv_spec(
                    shape, stage_widths[s], mid, k, stride, STAGE_ACTS[s], STAGE_SE[s]
                )
                specs.append(spec)
                shape = spec.output_shape
        c, h, _ = shape
        specs += [
            LayerSpec(
                op="conv",
                name="Conv_1",
                input_shape=shape,
                output_shape=(final_expand, h, h),
                kernel=1,
                activation="hswish",
                macs=c * final_expand * h * h,
                params=c * final_expand + 2 * final_expand,
                live_bytes=4 * (c + final_expand) * h * h,
            ),
            LayerSpec(
                op="global_avgpool",
                name="AvgPool2D",
                input_shape=(final_expand, h, h),
                output_shape=(final_expand, 1, 1),
                live_bytes=4 * (final_expand * h * h + final_expand),
            ),
            LayerSpec(
                op="conv",
                name="Conv_2",
                input_shape=(final_expand, 1, 1),
                output_shape=(last, 1, 1),
                kernel=1,
                activation="hswish",
                macs=final_expand * last,
                params=final_expand * last + last,
                live_bytes=4 * (final_expand + last),
            ),
            LayerSpec(
                op="linear",
                name="Logits",
                input_shape=(last, 1, 1),
                output_shape=(self.num_classes,),
                macs=last * self.num_classes,
                params=last * self.num_classes + self.num_classes,
                live_bytes=4 * (last + self.num_classes),
            ),
        ]
        return specs


class MobileNetV3Supernet(Supernet):
    """Max-size OFA MobileNetV3: block `b` of stage `s` is `blocks[s * MAX_DEPTH + b]` at
    kernel 7 and expansion 6; fixed layers (stem, first block, head) are plain modules."""

    def __init__(self, space: MobileNetV3Space, transform_kernels: bool = True) -> None:
        super().__init__(space)
        stem, first, *stage_widths, final_expand, last = space.widths
        self.first_conv = ConvBNAct(3, stem, 3, stride=2, act="hswish")
        self.first_block = MBConv(stem, first, stem, 3, 1, act="relu", expand_conv=False)
        blocks: list[nn.Module] = []
        c = first
        for s in range(N_STAGES):
            for b in range(MAX_DEPTH):
                blocks.append(
                    ElasticMBConv(
                        c,
                        stage_widths[s],
                        make_divisible(round(c * max(EXPANDS)), 8),
                        KERNELS,
                        STAGE_STRIDES[s] if b == 0 else 1,
                        STAGE_ACTS[s],
                        STAGE_SE[s],
                        transform_kernels=transform_kernels,
                    )
                )
                c = stage_widths[s]
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = ConvBNAct(c, final_expand, 1, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = ConvBNAct(final_expand, last, 1, act="hswish", bn=False)
        self.classifier = nn.Linear(last, space.num_classes)
        self._first_width = first
        self._stage_widths = tuple(stage_widths)
        self._active: tuple[int, ...] = ()
        self.set_arch(self.largest_arch())

    def _configure(self, arch: Arch) -> None:
        active: list[int] = []
        c = self._first_width
        for s in range(N_STAGES):
            for b in range(int(arch[f"s{s}.depth"])):
                k, e = int(arch[f"s{s}.b{b}.k"]), int(arch[f"s{s}.b{b}.e"])
                block = self.blocks[s * MAX_DEPTH + b]
                assert isinstance(block, ElasticMBConv)
                block.configure(c, self._stage_widths[s], make_divisible(round(c * e), 8), k)
                active.append(s * MAX_DEPTH + b)
                c = self._stage_widths[s]
        self._active = tuple(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x 3 x R x R
        x = self.first_block(self.first_conv(x))  # N x first x R/2 x R/2
        for i in self._active:
            x = self.blocks[i](x)  # last: N x 160 x R/32 x R/32
        x = self.feature_mix(self.pool(self.final_expand(x)))  # N x last x 1 x 1
        return self.classifier(x.flatten(1))  # N x classes

    def _subnet_state(self) -> dict[str, torch.Tensor]:
        state = active_state_dict(self.first_conv, "first_conv.")
        state.update(active_state_dict(self.first_block, "first_block."))
        for j, i in enumerate(self._active):
            state.update(active_state_dict(self.blocks[i], f"blocks.{j}."))
        for name in ("final_expand", "feature_mix", "classifier"):
            state.update(active_state_dict(getattr(self, name), f"{name}."))
        return state

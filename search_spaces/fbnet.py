"""`fbnet`: the FBNet space (Wu et al., CVPR 2019) in HW-NAS-Bench's CIFAR layout (Li et al., 2021).

Input 32x32; a 3x3 stem with 16 channels, stride 1; 22 searchable layers in stages of
1,4,4,4,4,4,1 layers with 16,24,32,64,112,184,352 channels and first-layer strides
1,1,2,2,1,2,1; a 1x1 header conv to 1504 channels, global pool and classifier. Each layer picks
one of 9 blocks (op indices 0-8): k3_e1, k3_e1_g2, k3_e3, k3_e6, k5_e1, k5_e1_g2, k5_e3, k5_e6,
skip. Blocks are inverted bottlenecks (1x1 expand -> kxk depthwise -> 1x1 project); `_g2` makes
both 1x1 convs group convs with a channel shuffle; `skip` is the identity, or a 1x1 conv where
the shape changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from nas.core.blocks import ConvBNAct, MBConv
from nas.core.elastic import MixedOp, Supernet, active_state_dict
from nas.core.layers import LayerSpec
from nas.core.space import Arch, Choice, InvalidArchError, SearchSpace

__all__ = [
    "HEADER_CHANNELS",
    "LAYER_KEYS",
    "N_LAYERS",
    "OPS",
    "STAGE_CHANNELS",
    "STAGE_LAYERS",
    "STAGE_STRIDES",
    "STEM_CHANNELS",
    "FBNet",
    "FBNetSpace",
    "FBNetSupernet",
    "Header",
    "layer_plan",
    "make_layer",
    "parse_op",
]

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
STAGE_LAYERS = (1, 4, 4, 4, 4, 4, 1)
STAGE_CHANNELS = (16, 24, 32, 64, 112, 184, 352)
STAGE_STRIDES = (1, 1, 2, 2, 1, 2, 1)
STEM_CHANNELS = 16
HEADER_CHANNELS = 1504
N_LAYERS = sum(STAGE_LAYERS)
LAYER_KEYS = tuple(f"layer{i:02d}" for i in range(N_LAYERS))


def layer_plan() -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of each of the 22 searchable layers."""
    plan, c = [], STEM_CHANNELS
    for n, out, stride in zip(STAGE_LAYERS, STAGE_CHANNELS, STAGE_STRIDES, strict=True):
        for i in range(n):
            plan.append((c, out, stride if i == 0 else 1))
            c = out
    return plan


def parse_op(op: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a block name like 'k5_e1_g2'."""
    parts = op.split("_")
    kernel, expand = int(parts[0][1:]), int(parts[1][1:])
    groups = int(parts[2][1:]) if len(parts) > 2 else 1
    return kernel, expand, groups


def make_layer(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    if op == "skip":
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return ConvBNAct(c_in, c_out, 1, stride, act="none")
    kernel, expand, groups = parse_op(op)
    return MBConv(
        c_in, c_out, c_in * expand, kernel, stride, act="relu", groups=groups, dw_act=False
    )


class _Wrap(nn.Module):
    """Lets an identity layer be traced (an op-free module would hand back its input)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _wrapped_layer(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    return _Wrap(make_layer(op, c_in, c_out, stride))


class Header(nn.Sequential):
    def __init__(self, num_classes: int) -> None:
        super().__init__(
            ConvBNAct(STAGE_CHANNELS[-1], HEADER_CHANNELS, 1, act="relu"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(HEADER_CHANNELS, num_classes),
        )


class FBNet(nn.Module):
    def __init__(self, ops: Sequence[str], num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 1, act="relu")
        self.layers = nn.Sequential(
            *(make_layer(op, *p) for op, p in zip(ops, layer_plan(), strict=True))
        )
        self.header = Header(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.header(self.layers(self.stem(x)))  # layers: N x 352 x 4 x 4


class FBNetSpace(SearchSpace):
    name = "fbnet"
    dims: ClassVar[Mapping[str, Choice]] = {k: Choice(*OPS) for k in LAYER_KEYS}
    default_input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def from_indices(self, indices: Sequence[int]) -> Arch:
        """An arch from its 22 op indices (0-8, in the order of `OPS`)."""
        idx = list(indices)
        bad = [(i, v) for i, v in enumerate(idx) if not (isinstance(v, int) and 0 <= v < len(OPS))]
        if len(idx) != N_LAYERS or bad:
            raise InvalidArchError(
                f"an FBNet arch is a list of {N_LAYERS} op indices in 0..{len(OPS) - 1} "
                f"({', '.join(f'{i}={op}' for i, op in enumerate(OPS))}); got {len(idx)} "
                f"entries" + (f", bad entries (position, value): {bad}" if bad else "")
            )
        return {k: OPS[v] for k, v in zip(LAYER_KEYS, idx, strict=True)}

    def to_indices(self, arch: Mapping[str, Any]) -> list[int]:
        a = self.validate(arch)
        return [OPS.index(str(a[k])) for k in LAYER_KEYS]

    def key(self, arch: Mapping[str, Any]) -> str:
        return "fbnet:" + "".join(str(i) for i in self.to_indices(arch))

    def from_key(self, key: str) -> Arch:
        digits = key.removeprefix("fbnet:") if isinstance(key, str) else ""
        if not key.startswith("fbnet:") or not digits.isdigit():
            raise InvalidArchError(f"an FBNet key reads 'fbnet:' + 22 op indices, got {key!r}")
        return self.from_indices([int(d) for d in digits])

    def block_specs(self, arch: Mapping[str, Any]) -> list[LayerSpec]:
        """Traced per layer and composed: the same specs as tracing `build`."""
        a = self.validate(arch)
        shape: tuple[int, ...] = self.default_input_shape
        specs = list(
            self.traced_block("stem", partial(ConvBNAct, 3, STEM_CHANNELS, 3, 1, act="relu"), shape)
        )
        shape = specs[-1].output_shape
        for key, (c_in, c_out, stride) in zip(LAYER_KEYS, layer_plan(), strict=True):
            op = str(a[key])
            layer = self.traced_block(
                (op, c_in, c_out, stride),
                partial(_wrapped_layer, op, c_in, c_out, stride),
                shape,
            )
            specs += layer
            if layer:
                shape = layer[-1].output_shape
        specs += self.traced_block(
            ("header", self.num_classes), partial(Header, self.num_classes), shape
        )
        return specs

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        a = self.validate(arch)
        return FBNet([str(a[k]) for k in LAYER_KEYS], self.num_classes)

    def supernet(self) -> FBNetSupernet:
        """One-shot supernet: each layer holds all 9 candidate blocks, one weight set each."""
        return FBNetSupernet(self)


class FBNetSupernet(Supernet):
    """FBNet with a `MixedOp` of the 9 blocks per layer (FBNet's / SPOS's layer choice)."""

    LARGEST_OP = "k5_e6"
    SMALLEST_OP = "skip"

    def __init__(self, space: FBNetSpace) -> None:
        super().__init__(space)
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 1, act="relu")
        self.layers = nn.ModuleList(
            MixedOp({op: make_layer(op, *p) for op in OPS}) for p in layer_plan()
        )
        self.header = Header(space.num_classes)
        self.set_arch(self.largest_arch())

    def largest_arch(self) -> Arch:
        return dict.fromkeys(LAYER_KEYS, self.LARGEST_OP)

    def smallest_arch(self) -> Arch:
        return dict.fromkeys(LAYER_KEYS, self.SMALLEST_OP)

    def _configure(self, arch: Arch) -> None:
        for key, layer in zip(LAYER_KEYS, self.layers, strict=True):
            assert isinstance(layer, MixedOp)
            layer.choose(str(arch[key]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x 3 x 32 x 32
        x = self.stem(x)  # N x 16 x 32 x 32
        for layer in self.layers:
            x = layer(x)  # last: N x 352 x 4 x 4
        return self.header(x)  # N x classes

    def _subnet_state(self) -> dict[str, torch.Tensor]:
        state = active_state_dict(self.stem, "stem.")
        for i, layer in enumerate(self.layers):
            state.update(active_state_dict(layer, f"layers.{i}."))
        state.update(active_state_dict(self.header, "header."))
        return state

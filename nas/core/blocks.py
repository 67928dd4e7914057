"""Static building blocks shared by the built-in spaces (MobileNet-style inverted bottlenecks).

Blocks are written in terms of their channel counts and kernel, so a weight-sharing supernet can
slice a max-size block down to any of them (Once-for-All, Cai et al., ICLR 2020; MobileNetV3,
Howard et al., ICCV 2019). The MAC, parameter and activation-memory formulas beside them price a
block without building it; tests check them against the built module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas.core.layers import LayerSpec

__all__ = [
    "ACTIVATIONS",
    "ChannelShuffle",
    "ConvBNAct",
    "MBConv",
    "SqueezeExcite",
    "activation",
    "conv_out",
    "make_divisible",
    "mbconv_spec",
    "se_channels",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hswish": lambda: nn.Hardswish(inplace=True),
    "hsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "none": nn.Identity,
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90 % of `value` (as OFA)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}") from None


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation, 'same' padding."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str = "relu",
        bn: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=not bn)
        ]
        if bn:
            layers.append(nn.BatchNorm2d(out_ch))
        if act != "none":
            layers.append(activation(act))
        super().__init__(*layers)


def se_channels(channels: int, reduction: int = 4) -> int:
    return make_divisible(channels // reduction, 8)


class SqueezeExcite(nn.Module):
    """OFA's SE module: global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> h-sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = se_channels(channels, reduction)
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # N x C x 1 x 1
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class MBConv(nn.Module):
    """Inverted bottleneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ identity).

    `mid` is the expanded channel count; with `mid == in_ch` and `expand_conv=False` the 1x1
    expansion is left out (MobileNetV3's first block). `groups` > 1 makes both 1x1 convs group
    convs with a channel shuffle after the expansion (FBNet's `_g2` blocks).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        mid: int,
        kernel: int,
        stride: int,
        act: str = "relu",
        se: bool = False,
        expand_conv: bool = True,
        groups: int = 1,
        dw_act: bool = True,
    ) -> None:
        super().__init__()
        if not expand_conv and mid != in_ch:
            raise ValueError(f"without an expansion conv mid must equal in_ch ({in_ch}), got {mid}")
        self.in_ch, self.out_ch, self.mid = in_ch, out_ch, mid
        self.kernel, self.stride = kernel, stride
        self.expand = ConvBNAct(in_ch, mid, 1, groups=groups, act=act) if expand_conv else None
        self.shuffle = ChannelShuffle(groups) if groups > 1 else None
        self.depthwise = ConvBNAct(
            mid, mid, kernel, stride, groups=mid, act=act if dw_act else "none"
        )
        self.se = SqueezeExcite(mid) if se else None
        self.project = ConvBNAct(mid, out_ch, 1, groups=groups, act="none")
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.expand(y)
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a conv with 'same' padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def mbconv_spec(
    in_shape: tuple[int, ...],
    out_ch: int,
    mid: int,
    kernel: int,
    stride: int,
    act: str,
    se: bool,
    expand_conv: bool = True,
    dtype_bytes: int = 4,
) -> LayerSpec:
    """OFA's `expanded_conv` spec of one MBConv, with MACs, params and activation memory.

    Activation memory follows the tracer's rules (`nas.core.layers`): conv+BN+act write one tensor,
    the block input stays alive until the residual add, the add writes a new tensor.
    """
    c, h, w = in_shape  # (C, H, W)
    ho, wo = conv_out(h, kernel, stride), conv_out(w, kernel, stride)
    residual = stride == 1 and c == out_ch
    macs = params = 0
    live = [c * h * w + (mid * h * w if expand_conv else 0)]
    if expand_conv:
        macs += c * mid * h * w
        params += c * mid + 2 * mid
    held = c * h * w if (residual or not expand_conv) else 0  # input still referenced
    mid_in = mid * h * w
    mid_out = mid * ho * wo
    macs += mid * kernel * kernel * ho * wo
    params += mid * kernel * kernel + 2 * mid
    live.append(held + (mid_in if expand_conv else 0) + mid_out)
    if se:
        s = se_channels(mid)
        macs += 2 * mid * s
        params += mid * s + s + s * mid + mid
        live.append(held + 2 * mid_out + mid + s)
    out = out_ch * ho * wo
    macs += mid * out_ch * ho * wo
    params += mid * out_ch + 2 * out_ch
    live.append(held + mid_out + out)
    if residual:
        live.append(c * h * w + 2 * out)
    return LayerSpec(
        op="expanded_conv",
        input_shape=in_shape,
        output_shape=(out_ch, ho, wo),
        kernel=kernel,
        stride=stride,
        expand=mid,
        activation=act,
        se=se,
        idskip=residual,
        macs=macs,
        params=params,
        live_bytes=max(live) * dtype_bytes,
    )

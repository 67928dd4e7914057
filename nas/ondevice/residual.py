"""TinyTL's lite residual branches (Cai et al., NeurIPS 2020): beside each block of a deployed
network, a small branch at half the block's resolution (average pool, 3x3 group convolution,
ReLU, 1x1 convolution, nearest upsampling) added to the block's output. The main weights stay
frozen; the branches and every bias train (plan mode ``lite_residual``), so the backward pass
keeps only the branches' small activations beside what biases need.

A branch's last convolution starts at zero, so the network with branches computes exactly what
the deployed one does until it trains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nas.ondevice.plans import blocks

__all__ = ["GROUP_WIDTH", "LiteResidual", "LiteResidualBlock", "add_lite_residuals"]

GROUP_WIDTH = 8
"""Channels per group of the branch's 3x3 convolution (TinyTL's group convolution)."""


class LiteResidual(nn.Module):
    """The branch: average pool by 2, 3x3 group conv (stride of the block), ReLU, 1x1 conv to the block's
    output channels (zero at first), nearest upsampling to the block's output size."""

    pool_weight: torch.Tensor

    def __init__(self, in_ch: int, out_ch: int, stride: int, pool: bool) -> None:
        super().__init__()
        groups = math.gcd(in_ch, max(1, in_ch // GROUP_WIDTH))
        self.pool = pool
        # a 2x2 average pool as a fixed depthwise convolution: the runtime has no kernel for
        # avg_pool2d's backward, while a convolution's backward passes gradients on
        self.register_buffer("pool_weight", torch.full((in_ch, 1, 2, 2), 0.25), persistent=False)
        self.conv = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=groups)
        self.act = nn.ReLU()
        self.project = nn.Conv2d(in_ch, out_ch, 1)
        nn.init.zeros_(self.project.weight)
        if self.project.bias is not None:
            nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.pool:
            x = F.conv2d(x, self.pool_weight, stride=2, groups=x.shape[1])
        out = self.project(self.act(self.conv(x)))
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="nearest")
        return out


class LiteResidualBlock(nn.Module):
    """A deployed block (``main``) with its lite residual branch (``lite``) added to its output."""

    def __init__(self, main: nn.Module, lite: LiteResidual) -> None:
        super().__init__()
        self.main = main
        self.lite = lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + self.lite(x, out.shape[-2:])


def _block_shapes(
    net: nn.Module, input_shape: Sequence[int]
) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shapes of each composite block that maps one image tensor to another."""
    probe = net if all(p.is_meta for p in net.parameters()) else copy.deepcopy(net).to("meta")
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name in blocks(probe):
        module = probe.get_submodule(name)
        if isinstance(module, nn.Sequential) or not any(True for _ in module.children()):
            continue  # a container or a single layer (stem conv, batch norm): no block

        def hook(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            x = args[0] if args else None
            if (
                len(args) == 1
                and isinstance(x, torch.Tensor)
                and isinstance(out, torch.Tensor)
                and x.dim() == 4
                and out.dim() == 4
            ):
                shapes[name] = (x.shape, out.shape)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            probe.eval()(torch.empty((1, *input_shape), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def add_lite_residuals(net: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of `net` (on its device, meta included) with a lite residual branch beside each
    block that maps an image tensor to another; a ValueError when there is none."""
    shapes = _block_shapes(net, input_shape)
    if not shapes:
        raise ValueError(
            "the network has no block that maps an image tensor to another: no place for a "
            "lite residual branch"
        )
    out = copy.deepcopy(net)
    device = next(out.parameters()).device
    for name, (x, y) in shapes.items():
        pool = min(x[-2:]) >= 2 and min(y[-2:]) >= 2
        stride = max(1, round(x[-1] / y[-1]))
        with torch.device(device):
            lite = LiteResidual(x[1], y[1], stride, pool)
        parent, _, child = name.rpartition(".")
        holder = out.get_submodule(parent) if parent else out
        setattr(holder, child, LiteResidualBlock(holder.get_submodule(child), lite))
    return out

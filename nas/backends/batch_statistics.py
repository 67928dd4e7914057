"""Batch norm in training mode for ExecuTorch training programs: each ``BatchNorm2d`` written
out in plain ops (batch mean and variance, running statistics updated in place), because the
runtime has no kernel for ``aten::_native_batch_norm_legit_functional`` and the stock
decomposition brings ``var_mean`` and prims the edge dialect refuses."""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

__all__ = ["BatchStatisticsNorm2d", "with_batch_statistics"]


class BatchStatisticsNorm2d(nn.Module):
    """A ``BatchNorm2d`` that always normalizes with the batch's statistics and updates its
    running statistics as PyTorch's training mode does (momentum, unbiased running variance);
    it shares the original's weight and bias, so parameter names do not change."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not bn.affine or not bn.track_running_stats or bn.momentum is None:
            raise ValueError(
                "batch norm in training mode is written out for affine BatchNorm2d with running "
                "statistics and a fixed momentum"
            )
        self.weight, self.bias = bn.weight, bn.bias
        assert bn.running_mean is not None and bn.running_var is not None
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.eps, self.momentum = bn.eps, bn.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
        n = x.numel() / x.shape[1]
        with torch.no_grad():  # a buffer mutation in the program, no gradient
            m = self.momentum
            running_mean = cast(torch.Tensor, self.running_mean)
            running_var = cast(torch.Tensor, self.running_var)
            running_mean.mul_(1 - m).add_(m * mean.detach().flatten())
            running_var.mul_(1 - m).add_(m * var.detach().flatten() * n / max(n - 1, 1))
        scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[None, :, None, None]


def with_batch_statistics(net: nn.Module) -> nn.Module:
    """A copy of `net` whose ``BatchNorm2d`` layers are :class:`BatchStatisticsNorm2d` (same
    parameter names and ``requires_grad``); other batch norms are refused by name."""
    work = copy.deepcopy(net)
    for name, module in list(work.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not isinstance(module, nn.BatchNorm2d):
                raise ValueError(f"{name}: only BatchNorm2d trains in training mode here")
            parent_name, _, child = name.rpartition(".")
            parent = work.get_submodule(parent_name) if parent_name else work
            setattr(parent, child, BatchStatisticsNorm2d(module))
    return work

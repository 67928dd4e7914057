"""PyTorch eager, the reference every artifact is checked against: logits batch by batch.

Plain modules run with NHWC weights and inputs, the layout CPU kernels run depthwise
convolutions fastest in; an exported graph (a PT2E int8 model) runs as it was converted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["predict_logits", "set_weight_layout"]


def set_weight_layout(model: nn.Module, channels_last: bool) -> None:
    """Store ``model``'s 4-D weights (convolutions) in NHWC (``channels_last``) or back in NCHW
    memory order, in place; the values stay the same."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=fmt)


@torch.no_grad()
def predict_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of ``model`` for ``images`` (N x C x H x W) in eval mode, batch by batch."""
    # An exported graph (a PT2E model) switches modes by rewriting its graph, and its `training`
    # flag does not follow: it is put in eval mode and left there.
    restore = isinstance(model, nn.Module) and model.training
    if isinstance(model, torch.fx.GraphModule):
        restore = False
    if isinstance(model, nn.Module):
        model.eval()
    # Plain modules run in NHWC (channels_last): depthwise convolutions on CPUs take about a
    # quarter less time than in NCHW, with the same results up to float rounding.
    nhwc = isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule)
    if nhwc:
        assert isinstance(model, nn.Module)
        set_weight_layout(model, True)
    outs = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]  # B x C x H x W
            if nhwc and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(model(x).detach().float().contiguous())
    finally:
        if nhwc:
            assert isinstance(model, nn.Module)
            set_weight_layout(model, False)
        if restore:
            assert isinstance(model, nn.Module)
            model.train()
    if not outs:
        return torch.zeros((0, 0))
    return torch.cat(outs)  # N x classes

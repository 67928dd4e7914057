"""Batch-norm recalibration: re-estimate a (sub)net's running statistics, as OFA's
`set_running_statistics` (Once-for-All, Cai et al., ICLR 2020), or keep them untouched."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from nas.core.elastic import resize_to

__all__ = ["bn_stats_preserved", "recalibrate_bn"]


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_buffers(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> list[dict[str, Tensor]]:
    return [{n: b.detach().clone() for n, b in bn.named_buffers(recurse=False)} for bn in bns]


def _restore_bn_buffers(
    bns: Sequence[nn.modules.batchnorm._BatchNorm], saved: Sequence[dict[str, Tensor]]
) -> None:
    with torch.no_grad():
        for bn, buffers in zip(bns, saved, strict=True):
            for name, value in buffers.items():
                getattr(bn, name).copy_(value)


@contextlib.contextmanager
def bn_stats_preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block, then put every batch-norm buffer of `model` back as it was.

    For recalibrating a subnet in place inside a supernet whose statistics must survive.
    """
    bns = _batch_norms(model)
    saved = _bn_buffers(bns)
    try:
        yield model
    finally:
        _restore_bn_buffers(bns, saved)


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    max_batches: int | None = None,
    input_size: Sequence[int] | None = None,
) -> int:
    """Re-estimate the batch-norm running statistics of `model` on `batches`; return how many
    batches were used.

    Each statistic becomes the exact mean over the batches of the per-batch mean and (unbiased)
    variance, as OFA's `set_running_statistics`. Only the running statistics change (for an
    elastic batch norm in a supernet only its active channels); on success they keep their new
    values, while the momentum and every module's train / eval mode are restored in `finally`,
    and on an error the statistics are put back too. `batches` yields images (N x C x H x W) or
    (images, labels, ...) tuples; `input_size` resizes the images (elastic resolution).
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be None or >= 1, got {max_batches}")
    bns = _batch_norms(model)
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    saved = _bn_buffers(bns)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    ok = False
    n = 0
    try:
        for bn in bns:
            bn.momentum = None  # cumulative average: the n-th batch gets weight 1/n
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.zero_()
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch if isinstance(batch, Tensor) else batch[0]  # N x C x H x W
                if input_size is not None:
                    x = resize_to(x, input_size)
                model(x.to(device))
                n += 1
                if max_batches is not None and n >= max_batches:
                    break
        if n == 0:
            raise ValueError("recalibrate_bn got no batches; pass at least one batch of images")
        ok = True
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
        if not ok:
            _restore_bn_buffers(bns, saved)
    return n

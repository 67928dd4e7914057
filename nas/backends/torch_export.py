"""``torch.export`` of a module in eval mode: the program every artifact is made from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from nas.backends.quiet import quiet_exporters

__all__ = ["eval_mode", "export_program"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the duration, then restore every submodule's own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _args(example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (example,) if isinstance(example, torch.Tensor) else tuple(example)


def export_program(
    module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` in eval mode at the example's shape (batch included);
    ``example`` is the input, or a tuple of inputs for a module that takes several. The
    caller's training modes are restored afterwards."""
    with eval_mode(module), torch.no_grad(), quiet_exporters():
        return torch.export.export(module, _args(example))

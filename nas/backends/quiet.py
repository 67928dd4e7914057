"""The exporters' chatter about their own internals, kept out of the user's log around our calls.

How it reaches the user otherwise (torch 2.13, onnxscript 0.7, executorch 1.5; an ONNX export
of one convolution, run with ``-W default`` and the root logger at INFO):

- ``torchvision is not installed. Skipping torchvision::nms`` (and ``roi_align``, ``roi_pool``,
  ``deform_conv2d``), on every export: WARNING records of the logger
  ``torch.onnx._internal.exporter._registration``. torch's logging set-up gives ``torch.onnx``
  its own stderr handler and stops it propagating, so the user's logging configuration never
  sees them, and ``import torch`` resets that logger's level to NOTSET (inheriting WARNING
  from ``torch``): a level set on it before torch is imported does not last.
- The passes of onnxscript and onnx_ir log at INFO (``No unused functions to remove``, ...);
  those records propagate to the root logger's handlers.
- The exporters' and lowerers' warnings (a ``FutureWarning`` about ``LeafSpec``, executorch's
  ``DeprecationWarning``s and ``ExperimentalWarning``) go through the ``warnings`` module.
- executorch's lowering logs DEBUG records on the root logger itself.

ExecuTorch's C++ runtime also prints a few lines (``[cpuinfo_utils.cpp:71] ...``) straight to
file descriptor 2 when a program is loaded; no Python filter reaches those.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_exporters"]

_CHATTY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "executorch",
    "torchao",
    "torch.utils._pytree",  # torchao registers pytree nodes on import and torch warns
)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """For the duration, drop the exporters' log records below ERROR and ignore warnings.

    Used by every export, lowering and program load of this package, and by nothing else:
    records logged before or after, and by other loggers (ours, the user's), are untouched.
    The exporters' loggers are raised to ERROR unless someone opened one up to INFO or DEBUG:
    that is how to watch an export (``TORCH_LOGS=+onnx``, or
    ``logging.getLogger("onnxscript").setLevel(logging.DEBUG)``). Records a library logs on the
    root logger itself are dropped below ERROR by a filter on it, which named loggers' records
    never meet. Levels and filters are put back on exit; nesting is fine. Levels are
    process-wide: another thread's records on those loggers are dropped meanwhile too.
    """
    raised = [
        (lg, lg.level)
        for lg in map(logging.getLogger, _CHATTY_LOGGERS)
        if lg.level == logging.NOTSET or lg.level >= logging.WARNING
    ]
    root, errors_only = logging.getLogger(), _ErrorsOnly()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg, level in raised:
            lg.setLevel(max(level, logging.ERROR))
        root.addFilter(errors_only)
        try:
            yield
        finally:
            root.removeFilter(errors_only)
            for lg, level in raised:
                lg.setLevel(level)

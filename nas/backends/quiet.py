"""Scoped silence for the exporters' and lowerers' chatter about their own internals."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__: list[str] = []


_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime", "root")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and lowerers' chatter about their own internals (their warnings
    and INFO logs), restoring the log levels afterwards."""
    loggers = [logging.getLogger(n if n != "root" else None) for n in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.ERROR) if lg.name == "root" else logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)

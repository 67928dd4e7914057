"""LiteRT ``.tflite`` files and their interpreter (optional extra: ``litert-torch`` or
``ai-edge-torch``, ~1.2 GB with jax)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.backends.artifact import _artifact_file, _check, _unloadable
from nas.backends.quiet import quiet_exporters
from nas.backends.torch_export import eval_mode

__all__ = ["TfliteRunner", "export_tflite"]


def _litert_converter() -> Any:
    for name in ("litert_torch", "ai_edge_torch"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise ImportError(
        "LiteRT export is an optional extra: pip install 'edge-nas[litert]' (litert-torch; it "
        "brings jax and transformers, about 1.2 GB); neither litert_torch nor ai_edge_torch "
        "is installed"
    )


def export_tflite(module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write an fp32 ``module`` as a LiteRT flatbuffer (``.tflite``); optional extra."""
    converter = _litert_converter()
    with eval_mode(module), quiet_exporters():
        edge = converter.convert(module, (example,))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(path))
    return path


class TfliteRunner:
    """A ``.tflite`` file in the LiteRT interpreter (optional extra)."""

    runtime = "litert"

    def __init__(
        self, path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
    ) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ImportError(
                "running .tflite files needs ai-edge-litert (comes with litert-torch)"
            ) from err
        what = "a LiteRT model (.tflite)"
        self.path = _artifact_file(path, what)
        self.input_shape = tuple(int(s) for s in input_shape)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        except ValueError as err:  # "Model provided has model identifier ..."
            raise _unloadable(self.path, what, err) from None
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.set_tensor(self._in, np.zeros(self.input_shape, dtype=np.float32))

    def __call__(self) -> None:
        self.interpreter.invoke()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.interpreter.set_tensor(self._in, _check(self, x).numpy())
        self.interpreter.invoke()
        return torch.from_numpy(np.array(self.interpreter.get_tensor(self._out)))

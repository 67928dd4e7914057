"""Eager PyTorch on the CPU (``torch-cpu``): the baseline device.

fp32 runs the module as it is, under ``torch.inference_mode``. int8 uses FX graph-mode
post-training static quantization with the ``x86`` qconfig and quantized engine (fbgemm/oneDNN
int8 kernels, per-channel weights). That API is in maintenance mode in PyTorch (PT2E replaced it
for *export*), but it is still the only way to get real int8 kernels in *eager* execution; a
converted PT2E model would run fp32 kernels around quantize/dequantize pairs and time nothing
useful. Nothing is cached on disk here: preparing is cheap, and a quantized GraphModule could
only be saved as a pickle.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from latency_models.runtimes.base import (
    DTYPES,
    LayerItem,
    Prepared,
    Runtime,
    calibration_batches,
    check_dtype,
    check_items,
    check_shape,
    example_input,
)
from nas.backends import eval_mode

__all__ = [
    "QUANT_ENGINE",
    "TorchPrepared",
    "TorchRuntime",
    "quantize_fx_x86",
    "quantized_engine",
    "torch_threads",
]

log = logging.getLogger(__name__)

QUANT_ENGINE = "x86"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Fix ``torch.get_num_threads()`` to ``n`` for the duration, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    before = torch.backends.quantized.engine
    if name not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"torch-cpu int8 needs the quantized engine {name!r}; this torch build supports "
            f"{torch.backends.quantized.supported_engines}"
        )
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@dataclass
class TorchPrepared(Prepared):
    module: nn.Module = field(default_factory=nn.Identity)

    def __call__(self) -> None:
        with torch.inference_mode():
            self.module(self.example)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(self._check_input(x))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"run() expects a module with one tensor output; got {type(out)}")
        return out


def quantize_fx_x86(
    module: nn.Module, example: torch.Tensor, batches: list[torch.Tensor]
) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode, x86 qconfig), calibrated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        with quantized_engine(QUANT_ENGINE):
            model = copy.deepcopy(module).eval()
            try:
                observed = prepare_fx(model, get_default_qconfig_mapping(QUANT_ENGINE), (example,))
            except Exception as err:  # tracing failures come as many exception types
                raise ValueError(
                    "torch-cpu int8 uses FX graph-mode quantization, which needs a module that "
                    f"torch.fx can trace symbolically; tracing {type(module).__name__} failed: "
                    f"{err}"
                ) from err
            with torch.no_grad():
                for batch in batches:
                    observed(batch)
            return convert_fx(observed)


class TorchRuntime(Runtime):
    """Eager PyTorch with ``torch.set_num_threads(threads)`` while measuring."""

    runtime = "torch"
    dtypes = DTYPES

    def __init__(self, name: str = "torch-cpu", threads: int = 1, *, seed: int = 0) -> None:
        super().__init__(name, threads, seed=seed)

    @property
    def version(self) -> str:
        return f"torch {torch.__version__} (int8: FX PTQ, engine {QUANT_ENGINE})"

    def _fixed_threads(self) -> contextlib.AbstractContextManager[None]:
        return torch_threads(self.threads)

    def compile_many(self, items: Sequence[LayerItem], dtype: str = "fp32") -> int:
        """Eager PyTorch keeps no artifact cache: nothing can be compiled ahead."""
        check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        return 0

    def prepare(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Prepared:
        check_dtype(self.name, dtype, self.dtypes)
        shape = check_shape(input_shape)
        x = example_input(shape, self.seed)
        t0 = time.perf_counter()
        if dtype == "int8":
            batches = calibration_batches(calibration, shape, self.seed)
            with torch_threads(self.threads):
                compiled = quantize_fx_x86(module, x, batches)
            stage = "quantize_s"
        else:
            with eval_mode(module):
                compiled = copy.deepcopy(module)
            stage = "copy_s"
        build_s = {stage: time.perf_counter() - t0}
        return TorchPrepared(
            device=self.name,
            dtype=dtype,
            input_shape=shape,
            example=x,
            build_s=build_s,
            module=compiled,
        )

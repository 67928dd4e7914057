"""PT2E int8 pieces shared by the compression chain and the XNNPACK runtime: ExecuTorch's
XNNPACK quantizer, ``convert_pt2e``, and a cache of torchao's rewrite patterns.

torchao's PT2E flow (``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e``) with
ExecuTorch's ``XNNPACKQuantizer``: weights int8 symmetric per output channel, activations int8
per tensor (asymmetric), the scheme XNNPACK runs natively. :mod:`nas.compress` prepares,
calibrates and trains with it; ``latency_models.runtimes.xnnpack`` quantizes layers with the same
quantizer and converter, so a LUT prices what the chain exports.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "WEIGHT_BITS",
    "cached_pt2e_patterns",
    "check_weight_bits",
    "convert",
    "torchao_pt2e",
    "xnnpack_quantizer",
]


def torchao_pt2e() -> Any:
    """torchao's PT2E module (``torchao.quantization.pt2e``), or an ImportError naming the extra."""
    try:
        from torchao.quantization import pt2e
    except ImportError as err:
        raise ImportError(
            "int8 quantization needs torchao and executorch (the XNNPACK quantizer): "
            "pip install 'edge-nas[executorch]'"
        ) from err
    return pt2e


# torchao builds the aten graphs of its rewrite patterns (conv-bn folding, batch-norm train/eval
# switching) with a strict torch.export each time they are needed: ~100 exports, 20-50 s, per
# convert_pt2e call on a 2-core CPU, the same graphs every time. They are cached here, keyed by
# the pattern function's code, its closure values and the example inputs' shapes, and handed
# out as copies, so later calls in a process cost milliseconds. Only inside our own calls.
_PATTERN_CACHE: dict[Hashable, Any] = {}
_PATTERN_MODULES = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
)


def _pattern_key(
    pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]
) -> Hashable | None:
    fn = getattr(pattern, "fn", pattern)  # torchao wraps some patterns in a WrapperModule
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        value = cell.cell_contents
        if not isinstance(value, (bool, int, float, str, type(None))) and not callable(value):
            return None
        cells.append(getattr(value, "__qualname__", None) or repr(value))
    inputs: list[Hashable] = []
    for x in (*example_inputs, *sorted(kwargs.items())):
        value = x[1] if isinstance(x, tuple) else x
        tag = x[0] if isinstance(x, tuple) else ""
        if isinstance(value, torch.Tensor):
            inputs.append((tag, tuple(value.shape), str(value.dtype)))
        elif isinstance(value, (bool, int, float, str, type(None))):
            inputs.append((tag, type(value).__name__, repr(value)))
        else:
            return None
    return (code, tuple(cells), tuple(inputs), is_cuda)


@contextlib.contextmanager
def cached_pt2e_patterns() -> Iterator[None]:
    """Inside, torchao builds each of its rewrite-pattern graphs once per process (see above)."""
    from torchao.quantization.pt2e import utils as pt2e_utils

    original = pt2e_utils._get_aten_graph_module_for_pattern
    if getattr(original, "_edge_nas_cached", False):  # already inside
        yield
        return

    def cached(
        pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any
    ) -> Any:
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return original(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _PATTERN_CACHE:
            _PATTERN_CACHE[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytree's deprecation chatter on copying a graph
            return copy.deepcopy(_PATTERN_CACHE[key])

    cached._edge_nas_cached = True  # type: ignore[attr-defined]
    patched: list[tuple[Any, str, Any]] = []
    for name in _PATTERN_MODULES:
        module = sys.modules.get(name)
        if (
            module is not None
            and getattr(module, "_get_aten_graph_module_for_pattern", None) is original
        ):
            patched.append((module, "_get_aten_graph_module_for_pattern", original))
            module._get_aten_graph_module_for_pattern = cached  # type: ignore[attr-defined]
    # The conv-bn fuse / fold passes try conv1d, conv2d, conv_transpose1d and conv_transpose2d
    # patterns in turn; patterns of a conv kind the graph does not contain cannot match, so
    # those helpers are skipped (three quarters of the pattern builds for a 2-D CNN).
    from torchao.quantization.pt2e import qat_utils

    for helper_name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper"):
        helper = getattr(qat_utils, helper_name, None)
        if helper is not None:
            patched.append((qat_utils, helper_name, helper))
            setattr(qat_utils, helper_name, _only_present_convs(helper))
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


_CONV_OPS = {
    "conv1d": "aten.conv1d.",
    "conv2d": "aten.conv2d.",
    "conv_transpose1d": "aten.conv_transpose1d.",
    "conv_transpose2d": "aten.conv_transpose2d.",
}


def _only_present_convs(helper: Callable[..., Any]) -> Callable[..., Any]:
    def run(m: Any, conv_fn: Callable[..., Any], example_inputs: Any, is_cuda: bool) -> Any:
        prefix = _CONV_OPS.get(getattr(conv_fn, "__name__", ""))
        targets = {str(n.target) for n in m.graph.nodes if n.op == "call_function"}
        generic = any(t.startswith("aten.convolution.") for t in targets)
        if prefix is not None and not generic and not any(t.startswith(prefix) for t in targets):
            return m
        return helper(m, conv_fn, example_inputs, is_cuda)

    return run


WEIGHT_BITS = (7, 8)
"""Weight ranges: 8 is int8's symmetric [-127, 127]; 7 keeps weights in [-63, 63], still
stored as int8. x86 CPUs without VNNI multiply int8 pairs into 16-bit sums that saturate
with full-range weights (ONNX Runtime's int8 kernels there lost 6 % top-1 agreement with
PyTorch on a small QAT model); 7-bit weights cannot saturate. Phones' int8 paths do not
saturate: keep 8 unless an artifact runs on such an x86 CPU (``nas.backends.has_vnni``)."""


def check_weight_bits(weight_bits: int) -> int:
    if weight_bits not in WEIGHT_BITS:
        raise ValueError(
            f"weight_bits must be one of {WEIGHT_BITS} (7 against saturation on x86 CPUs "
            f"without VNNI); got {weight_bits!r}"
        )
    return weight_bits


def xnnpack_quantizer(*, is_qat: bool, per_channel: bool = True, weight_bits: int = 8) -> Any:
    """ExecuTorch's XNNPACK quantizer: symmetric int8 weights (per channel by default, in the
    range of ``weight_bits``: :data:`WEIGHT_BITS`), int8 per-tensor activations; ``is_qat``
    gives fake-quantize modules instead of observers."""
    qmax = 2 ** (check_weight_bits(weight_bits) - 1) - 1
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as err:
        raise ImportError(
            "the XNNPACK quantizer comes with executorch: pip install 'edge-nas[executorch]'"
        ) from err
    config = get_symmetric_quantization_config(
        is_per_channel=per_channel, is_qat=is_qat, weight_qmin=-qmax, weight_qmax=qmax
    )
    return XNNPACKQuantizer().set_global(config)


def convert(prepared: nn.Module) -> torch.fx.GraphModule:
    """The int8 model (quantize / dequantize ops around fp32 ops, weights stored int8) of a
    calibrated or QAT-trained prepared model, in eval mode, ready to export or lower."""
    pt2e = torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with warnings.catch_warnings(), cached_pt2e_patterns():
        warnings.simplefilter("ignore")
        prepared.eval()
        converted = convert_pt2e(prepared)
        pt2e.allow_exported_model_train_eval(converted)
        converted.eval()
    return converted

"""ONNX files from the ``torch.export``-based exporter, ONNX Runtime's static int8, and sessions.

``torch.onnx.export(..., dynamo=True)``: an fp32 module gives an fp32 model; a PT2E int8 model
gives a QDQ model. int8 can also come from ONNX Runtime's own static quantizer
(:func:`quantize_onnx_static`, QDQ, per-channel int8 weights, uint8 activations, MinMax
calibration), its recommended path for CPUs. Node metadata the exporter adds (source stack
traces: ~40 % of a small model's file) is stripped. The latency runtime
``latency_models.runtimes.onnxrt`` builds on :func:`onnx_model`, :func:`quantize_onnx_model` and
:func:`ort_session_options`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.backends.artifact import _artifact_file, _check, _unloadable, _write
from nas.backends.host import has_vnni
from nas.backends.quiet import quiet_exporters
from nas.backends.torch_export import _args, export_program

__all__ = [
    "OnnxRunner",
    "compact_onnx",
    "export_onnx",
    "onnx_bytes",
    "onnx_model",
    "ort_session_options",
    "quantize_onnx_model",
    "quantize_onnx_static",
    "strip_onnx_metadata",
]

log = logging.getLogger(__name__)


def strip_onnx_metadata(model: Any) -> Any:
    """Drop what only describes the model, keeping the computation: per-node metadata (source
    locations), node names and doc strings, value_info, and the model's and graph's metadata
    (the exporter stores the whole ``torch.export`` graph signature there: ~10 KB)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        node.name = ""
    del model.graph.value_info[:]
    del model.graph.metadata_props[:]
    del model.metadata_props[:]
    model.doc_string = ""
    model.graph.doc_string = ""
    return model


def compact_onnx(model: Any) -> Any:
    """Remove an ONNX model's overhead, in place, leaving its computation as it was.

    :func:`strip_onnx_metadata`; identical initializers stored once; zero points of
    ``DequantizeLinear`` nodes that dequantize a stored int8 / int32 tensor (weights and biases)
    for a ``Conv`` dropped where they are all zero (an absent zero point is zero, of the input's
    type: int8 weights are symmetric, int32 biases always zero); ONNX Runtime's fusions and
    results are unchanged by it (checked on the demo models); every value but the graph's inputs and
    outputs renamed to a short name (the exporter's names repeat module paths on every
    reference). Activation zero points stay: they give ``QuantizeLinear`` its output type.
    """
    from onnx import AttributeProto, numpy_helper

    graph = strip_onnx_metadata(model).graph
    if any(
        a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    ):
        return model  # subgraphs may refer to outer names: leave names and tensors as they are
    inits = {t.name: t for t in graph.initializer}
    # 1. identical initializers -> one
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        key = (t.data_type, tuple(a.shape), a.tobytes())
        alias[t.name] = first.setdefault(key, t.name)
    # 2. zero points of stored weights and biases
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        # Only for Conv: ONNX Runtime fuses QDQ Conv into QLinearConv either way, but fuses a
        # QDQ Gemm into QGemm only with its zero points present.
        if (
            node.op_type == "DequantizeLinear"
            and len(node.input) == 3
            and consumers.get(node.output[0]) == {"Conv"}
        ):
            x, zp = inits.get(node.input[0]), inits.get(alias.get(node.input[2], ""))
            if x is not None and zp is not None and not numpy_helper.to_array(zp).any():
                del node.input[2]
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if alias[t.name] == t.name and t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # 3. short names for everything but the graph's inputs and outputs
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
    short: dict[str, str] = {}
    skipped: list[str] = []

    def rename(name: str) -> str:
        if not name or name in fixed:
            return name
        if name not in short:
            candidate = np.base_repr(len(short) + len(skipped), 36).lower()
            while candidate in fixed:  # a graph input or output is called that already
                skipped.append(candidate)
                candidate = np.base_repr(len(short) + len(skipped), 36).lower()
            short[name] = candidate
        return short[name]

    for t in graph.initializer:
        t.name = rename(t.name)
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    return model


def onnx_model(
    module: nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    strip: bool = True,
) -> Any:
    """ONNX ``ModelProto`` of ``module`` (or of an ``ExportedProgram`` of it) from the
    ``torch.export``-based exporter; ``strip`` removes metadata, names and other overhead
    (:func:`compact_onnx`)."""
    args = _args(example)
    ep = (
        module if isinstance(module, torch.export.ExportedProgram) else export_program(module, args)
    )
    with quiet_exporters():
        program = torch.onnx.export(ep, args, dynamo=True, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program; expected an ONNXProgram")
    model = program.model_proto
    if strip:
        compact_onnx(model)
    return model


def onnx_bytes(module: nn.Module, example: torch.Tensor, strip: bool = True) -> bytes:
    """Serialized ONNX model of ``module`` from the ``torch.export``-based exporter."""
    data: bytes = onnx_model(module, example, strip).SerializeToString()
    return data


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], strip: bool = True
) -> Path:
    """Write ``module`` as ONNX (fp32 module -> fp32; PT2E int8 model -> QDQ int8)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'edge-nas[runtimes]'"
        ) from err
    return _write(Path(path), onnx_bytes(module, example, strip))


def quantize_onnx_model(
    model: Any,
    calibration: Sequence[torch.Tensor],
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    preprocess: bool = True,
    force_inputs: bool = False,
) -> Any:
    """ONNX Runtime static int8 quantization (QDQ) of the fp32 ``ModelProto`` ``model``.

    Per-channel (or per-tensor) int8 weights, uint8 activations, MinMax calibration over
    ``calibration`` (input batches of the model's one input). ``reduce_range`` (7-bit weights,
    against overflow in the u8s8 dot product of CPUs without VNNI) defaults to True exactly
    when this CPU lacks VNNI, as ONNX Runtime advises. ``preprocess`` runs ONNX Runtime's
    advised pre-processing first (shape inference and graph optimisation, so quantization sees
    fused ops); where it fails the model is quantized as it is. ``force_inputs`` quantizes
    ops whose input is not quantized already (pooling, additions, ...; ONNX Runtime leaves
    those in fp32 by default): what a lone layer needs to run as it does inside a network.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as err:
        raise ImportError(
            "ONNX Runtime quantization needs onnx and onnxruntime: pip install 'edge-nas[runtimes]'"
        ) from err
    if not calibration:
        raise ValueError("ONNX quantization needs at least one calibration batch; got none")
    name = model.graph.input[0].name
    batches = [{name: b.detach().float().numpy()} for b in calibration]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="edge-nas-ort-") as tmp, quiet_exporters():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        if preprocess:
            pre = Path(tmp) / "pre.onnx"
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(str(src), str(pre))
                src = pre
            except Exception as err:  # an optional improvement: quantize the model as it is
                log.warning("ONNX quantization pre-processing failed (%s); quantizing as is", err)
        quantize_static(
            src,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=(not has_vnni()) if reduce_range is None else reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ForceQuantizeNoInputCheck": True} if force_inputs else None,
        )
        return onnx.load(out)


def quantize_onnx_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: Sequence[torch.Tensor],
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """ONNX Runtime static int8 quantization of the fp32 model file ``src`` into ``dst`` (QDQ,
    pre-processed, overhead removed by :func:`compact_onnx`; see :func:`quantize_onnx_model`)."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "ONNX Runtime quantization needs onnx and onnxruntime: pip install 'edge-nas[runtimes]'"
        ) from err
    if not calibration:
        raise ValueError("quantize_onnx_static needs at least one calibration batch; got none")
    quantized = quantize_onnx_model(
        onnx.load(Path(src)), calibration, per_channel=per_channel, reduce_range=reduce_range
    )
    return _write(Path(dst), compact_onnx(quantized).SerializeToString())


def ort_session_options(threads: int) -> Any:
    """ONNX Runtime session options for timing on the CPU: ``threads`` intra-op threads, one
    inter-op thread, sequential execution, every graph optimisation, warnings off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class OnnxRunner:
    """An ONNX model in an ONNX Runtime CPU session with ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "running .onnx files needs onnxruntime: pip install 'edge-nas[runtimes]'"
            ) from err
        what = "an ONNX model (.onnx)"
        self.path = _artifact_file(path, what)
        self.input_shape = tuple(int(s) for s in input_shape)
        try:
            self.session = ort.InferenceSession(
                str(self.path), ort_session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            if not type(err).__module__.startswith("onnxruntime"):  # InvalidProtobuf, ...
                raise
            raise _unloadable(self.path, what, err) from None
        self._name = self.session.get_inputs()[0].name
        self._example = {self._name: np.zeros(self.input_shape, dtype=np.float32)}

    def __call__(self) -> None:
        self.session.run(None, self._example)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self._name: _check(self, x).numpy()})[0]
        return torch.from_numpy(np.asarray(out))

"""Deployable artifacts, the one place that makes them, and the runners that check them.

Formats:

- **ExecuTorch ``.pte``** with the XNNPACK delegate: ``torch.export`` -> ``to_edge_transform_and_lower``
  with ``XnnpackPartitioner`` -> ``to_executorch``. An fp32 module gives an fp32 program; a PT2E
  int8 model (:func:`nas.compress.qat.convert`) gives an int8 one, because the partitioner turns
  its quantize / dequantize patterns into XNNPACK's int8 operators.
- **ONNX** through the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``).
  An fp32 module gives an fp32 model; a PT2E int8 model gives a QDQ model. int8 can also come
  from ONNX Runtime's own static quantizer (:func:`quantize_onnx_static`, QDQ, per-channel int8
  weights, uint8 activations, MinMax calibration), its recommended path for CPUs. Node
  metadata the exporter adds (source stack traces: ~40 % of a small model's file) is stripped.
- **LiteRT ``.tflite``** (optional extra: ``litert-torch`` or ``ai-edge-torch``, ~1.2 GB with jax).

Artifacts are exported at batch 1 (``torch.export`` fixes every dimension): the deployment shape
and the one latency is measured at. Each format has a runner that executes the file in its own
runtime; :func:`check_parity` runs a runner over a test set and compares it with the model the
artifact came from (top-1 agreement and largest logit difference), so a quantization or export
bug cannot hide behind an accuracy measured in PyTorch.

This module is also the one implementation the latency runtimes (``latency_models.runtimes``)
build on: :func:`export_program`, :func:`lower_program`, :func:`onnx_model`,
:func:`quantize_onnx_model`, :class:`LoadedProgram` and the thread pool below.

ExecuTorch's runtime has one process-wide thread pool (created on first use with one thread per
CPU); ``portable_lib._unsafe_reset_threadpool(n)`` replaces it, and a loaded method keeps a
pointer to the pool it was loaded under, which a resize frees. :func:`set_executorch_threads` is
the one place that resizes it and counts resizes (:func:`executorch_pool_generation`); a
:class:`LoadedProgram` remembers the generation it was loaded under and reloads before running
when the pool has been replaced since. Resize through :func:`set_executorch_threads` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

__all__ = [
    "ARTIFACT_SUFFIXES",
    "ArtifactRunner",
    "LoadedProgram",
    "LoweredProgram",
    "OnnxRunner",
    "ParityReport",
    "PteRunner",
    "TfliteRunner",
    "check_parity",
    "compact_onnx",
    "cpu_flags",
    "cpu_info",
    "eval_mode",
    "executorch_pool_generation",
    "executorch_threads",
    "export_onnx",
    "export_program",
    "export_pte",
    "export_tflite",
    "has_vnni",
    "lower_program",
    "lower_to_pte",
    "min_latency_ms",
    "onnx_bytes",
    "onnx_model",
    "open_runner",
    "ort_session_options",
    "quantize_onnx_model",
    "quantize_onnx_static",
    "set_executorch_threads",
    "strip_onnx_metadata",
]

log = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = {".pte": "executorch-xnnpack", ".onnx": "onnxruntime", ".tflite": "litert"}


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
    with eval_mode(module), torch.no_grad(), _quiet():
        return torch.export.export(module, _args(example))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# -- ExecuTorch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoweredProgram:
    """An ExecuTorch program lowered with the XNNPACK delegate."""

    data: bytes
    """The ``.pte`` bytes."""
    graph_module: Any
    """The lowered edge graph (delegate calls and whatever was left outside them)."""
    stages_s: dict[str, float]
    """Seconds per stage: ``to_edge_and_lower_s``, ``to_executorch_s``, ``serialize_s``."""

    def undelegated_ops(self) -> list[str]:
        """Ops left to ExecuTorch's portable kernels (slow), sorted."""
        return sorted(
            {
                str(n.target)
                for n in self.graph_module.graph.nodes
                if n.op == "call_function"
                and "executorch_call_delegate" not in str(n.target)
                and "getitem" not in str(n.target)
            }
        )


def _xnnpack_partitioner() -> Any:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as err:
        raise ImportError(
            "ExecuTorch export needs executorch: pip install 'edge-nas[executorch]'"
        ) from err
    return XnnpackPartitioner()


def lower_program(ep: torch.export.ExportedProgram, partitioner: Any = None) -> LoweredProgram:
    """``to_edge_transform_and_lower`` with ``partitioner`` (default ``XnnpackPartitioner()``)
    -> ``to_executorch`` -> bytes: the one lowering every ``.pte`` in the project goes through.
    fp32 programs give fp32 ``.pte`` files, PT2E int8 ones int8 files."""
    if partitioner is None:
        partitioner = _xnnpack_partitioner()
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    with _quiet():
        edge = to_edge_transform_and_lower(ep, partitioner=[partitioner])
        t1 = time.perf_counter()
        program = edge.to_executorch()
        t2 = time.perf_counter()
        data = bytes(program.buffer)
    t3 = time.perf_counter()
    stages = {"to_edge_and_lower_s": t1 - t0, "to_executorch_s": t2 - t1, "serialize_s": t3 - t2}
    return LoweredProgram(data, edge.exported_program().graph_module, stages)


def lower_to_pte(
    module: nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor | None = None,
    partitioner: Any = None,
) -> tuple[bytes, dict[str, float]]:
    """ExecuTorch program bytes of ``module`` with every op XNNPACK takes delegated to it, and
    the seconds each stage took (``export_s`` and those of :func:`lower_program`). fp32
    modules give fp32 programs, PT2E int8 models int8 ones.

    ``module`` may be an ``ExportedProgram`` already (``example`` is then unused);
    ``partitioner`` replaces the default ``XnnpackPartitioner()`` (e.g. one delegate per layer).
    Ops left outside the delegate are logged as a warning.
    """
    if partitioner is None:
        partitioner = _xnnpack_partitioner()
    t0 = time.perf_counter()
    if isinstance(module, torch.export.ExportedProgram):
        ep = module
    else:
        if example is None:
            raise ValueError("lower_to_pte needs an example input to export a module")
        ep = export_program(module, example)
    export_s = time.perf_counter() - t0
    lowered = lower_program(ep, partitioner)
    undelegated = lowered.undelegated_ops()
    if undelegated:
        log.warning("ops left to ExecuTorch's portable kernels (slow): %s", undelegated)
    return lowered.data, {"export_s": export_s, **lowered.stages_s}


def export_pte(module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``module`` as an XNNPACK-delegated ExecuTorch program (see :func:`lower_to_pte`)."""
    data, times = lower_to_pte(module, example)
    log.info("wrote %s (%d bytes) in %.1f s", path, len(data), sum(times.values()))
    return _write(Path(path), data)


def _portable_lib() -> Any:
    try:
        with _quiet():
            from executorch.extension.pybindings import portable_lib
    except ImportError as err:
        raise ImportError(
            "running .pte files needs executorch: pip install 'edge-nas[executorch]'"
        ) from err
    return portable_lib


class _Pool:
    """Resizes of ExecuTorch's process-wide thread pool made through this module."""

    generation = 0


def executorch_threads() -> int:
    """Threads in ExecuTorch's process-wide pool now (creates the pool if it does not exist)."""
    return int(_portable_lib()._threadpool_get_thread_count())


def executorch_pool_generation() -> int:
    """How many times :func:`set_executorch_threads` has replaced the pool in this process."""
    return _Pool.generation


def set_executorch_threads(threads: int) -> int:
    """Size ExecuTorch's process-wide thread pool to ``threads``; returns the size it had.

    A resize replaces the pool and bumps :func:`executorch_pool_generation`: methods loaded
    before it point at the freed pool, and :class:`LoadedProgram` reloads them before running.
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1; got {threads!r}")
    lib = _portable_lib()
    before = int(lib._threadpool_get_thread_count())
    if before != threads:
        lib._unsafe_reset_threadpool(threads)
        _Pool.generation += 1
        got = int(lib._threadpool_get_thread_count())
        if got != threads:
            raise RuntimeError(
                f"could not size ExecuTorch's threadpool to {threads} threads; it has {got}"
            )
        log.debug("ExecuTorch threadpool resized from %d to %d threads", before, threads)
    return before


class LoadedProgram:
    """``.pte`` bytes loaded into ExecuTorch's runtime, method ``forward`` ready, inputs set.

    Loading sizes the thread pool to ``threads``; :meth:`fresh` reloads when the pool has been
    replaced since (see the module doc). ``etdump`` turns on the event tracer (per-delegate
    timings, written with ``program.write_etdump_result_to_file``).
    """

    def __init__(
        self,
        data: bytes,
        inputs: Sequence[torch.Tensor],
        threads: int = 1,
        *,
        etdump: bool = False,
    ) -> None:
        self.data = data
        self.inputs = tuple(inputs)  # kept alive: the method may point at their memory
        self.threads = threads
        self.etdump = etdump
        self.load()

    def load(self) -> None:
        lib = _portable_lib()
        set_executorch_threads(self.threads)
        self.generation = _Pool.generation
        with _quiet():
            self.program = lib._load_program_from_buffer(
                self.data,
                enable_etdump=self.etdump,
                debug_buffer_size=0,
                program_verification=lib.Verification.Minimal,
            )
        self.method = self.program.load_method("forward")
        self.method.set_inputs(self.inputs)

    def fresh(self) -> LoadedProgram:
        """Reload if the thread pool was replaced since loading; returns ``self``."""
        if self.generation != _Pool.generation:
            log.debug("ExecuTorch threadpool was replaced since load; reloading the method")
            self.load()
        return self

    def execute(self) -> None:
        self.method.execute()

    def outputs(self) -> list[torch.Tensor]:
        return [t for t in self.method.get_outputs() if isinstance(t, torch.Tensor)]

    def run(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Outputs (copies) for inputs ``xs``; the stored inputs are set back afterwards."""
        self.fresh()
        self.method.set_inputs(xs)
        try:
            self.method.execute()
            return [t.clone() for t in self.outputs()]
        finally:
            self.method.set_inputs(self.inputs)


class ArtifactRunner(Protocol):
    """Runs one artifact file in its runtime."""

    path: Path
    runtime: str
    input_shape: tuple[int, ...]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits for ``x`` (shape ``input_shape``)."""
        ...

    def __call__(self) -> None:
        """One inference on a stored input: the thing a latency measurement times."""
        ...


def _check(runner: ArtifactRunner, x: torch.Tensor) -> torch.Tensor:
    if tuple(x.shape) != runner.input_shape:
        raise ValueError(
            f"{runner.path.name} was exported for input shape {runner.input_shape}; got "
            f"{tuple(x.shape)} (export fixes every dimension, the batch included)"
        )
    return x.detach().to(torch.float32).contiguous()


class PteRunner:
    """An ExecuTorch ``.pte`` loaded with the XNNPACK thread pool sized to ``threads``."""

    runtime = "executorch-xnnpack"

    def __init__(
        self, path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
    ) -> None:
        self.path = Path(path)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.threads = threads
        self.loaded = LoadedProgram(
            self.path.read_bytes(), (torch.zeros(self.input_shape),), threads
        )

    def __call__(self) -> None:
        self.loaded.execute()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.loaded.run(_check(self, x))[0]


# -- ONNX -------------------------------------------------------------------------------------


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
    with _quiet():
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


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "flags", "cpu MHz" on x86;
    "Features", "CPU part" on Arm); empty where that file does not exist."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    return frozenset(cpu_info().get("flags", "").split())


def has_vnni() -> bool:
    """Whether this CPU has an 8-bit dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


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

    with tempfile.TemporaryDirectory(prefix="edge-nas-ort-") as tmp, _quiet():
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
        self.path = Path(path)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.session = ort.InferenceSession(
            str(self.path), ort_session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._name = self.session.get_inputs()[0].name
        self._example = {self._name: np.zeros(self.input_shape, dtype=np.float32)}

    def __call__(self) -> None:
        self.session.run(None, self._example)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self._name: _check(self, x).numpy()})[0]
        return torch.from_numpy(np.asarray(out))


# -- LiteRT (optional) ------------------------------------------------------------------------


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
    with eval_mode(module), _quiet():
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
        self.path = Path(path)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
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


def open_runner(
    path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
) -> ArtifactRunner:
    """The runner for an artifact, chosen by its suffix (.pte, .onnx, .tflite)."""
    suffix = Path(path).suffix
    runners: dict[str, Callable[..., ArtifactRunner]] = {
        ".pte": PteRunner,
        ".onnx": OnnxRunner,
        ".tflite": TfliteRunner,
    }
    if suffix not in runners:
        raise ValueError(
            f"no runner for {str(path)!r}: the suffix must be one of {sorted(runners)}"
        )
    return runners[suffix](path, input_shape, threads)


# -- parity and timing ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityReport:
    """An artifact run in its runtime over a test set, against the model it came from."""

    n_images: int
    top1_agreement: float
    max_abs_logit_diff: float
    runtime_accuracy: float
    reference_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def check_parity(
    runner: ArtifactRunner,
    reference: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    reference_batch_size: int = 256,
    reference_logits: torch.Tensor | None = None,
) -> ParityReport:
    """Run ``runner`` on every image (at its exported batch size) and ``reference`` (the model
    the artifact came from) in PyTorch; compare their top-1 and logits. ``reference_logits``,
    the reference's logits on ``images`` computed before, saves running it again when several
    artifacts come from one model."""
    batch = runner.input_shape[0]
    n = (len(images) // batch) * batch
    if n == 0:
        raise ValueError(
            f"check_parity needs at least {batch} images (the artifact's batch size); got "
            f"{len(images)}"
        )
    outs = [runner.run(images[i : i + batch]) for i in range(0, n, batch)]
    got = torch.cat(outs).float()  # n x classes
    from nas.compress.distill import predict_logits

    if reference_logits is not None and len(reference_logits) >= n:
        ref = reference_logits[:n].float()
    else:
        ref = predict_logits(reference, images[:n], reference_batch_size)  # n x classes
    if got.shape != ref.shape:
        raise RuntimeError(
            f"{runner.path.name} returns logits of shape {tuple(got.shape)}; the reference model "
            f"returns {tuple(ref.shape)}"
        )
    y = labels[:n]
    return ParityReport(
        n_images=n,
        top1_agreement=float((got.argmax(1) == ref.argmax(1)).float().mean()),
        max_abs_logit_diff=float((got - ref).abs().max()),
        runtime_accuracy=float((got.argmax(1) == y).float().mean()),
        reference_accuracy=float((ref.argmax(1) == y).float().mean()),
    )


def min_latency_ms(
    fn: Callable[[], object], *, warmup: int = 10, min_runs: int = 50, max_s: float = 2.0
) -> float:
    """A simple timing: ``warmup`` runs discarded, then at least ``min_runs`` runs (more while
    under ``max_s`` seconds), the fastest in ms: the headline figure of the project's protocol
    (``latency_models.measure``, whose docstring says why the minimum and not the median), which
    callers with that package at hand should use instead."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < max_s:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= 100_000:
            break
    return float(np.min(samples))

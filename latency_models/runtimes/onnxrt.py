"""ONNX Runtime on the CPU (``ort-cpu-1t``): ``torch.onnx`` export, optional int8 QDQ.

Export goes through ``torch.export`` and the dynamo-based ``torch.onnx`` exporter (the legacy
TorchScript exporter is deprecated). Sessions run the CPU execution provider with
``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``, sequential execution and all
graph optimisations; timing binds input and preallocated outputs once (IOBinding), so a timed
run is ``run_with_iobinding`` and nothing else.

int8 is ONNX Runtime's static post-training quantization in QDQ format: per-channel int8
weights, uint8 activations, MinMax calibration over the given data or seeded random batches.
That is ONNX Runtime's advice for x86; ``reduce_range`` (7-bit weights, against saturation of
the u8s8 dot product on CPUs without VNNI) is set from the CPU flags and recorded in the cache
metadata. The exported and quantized models are cached on disk (see ``cache.py``).

``measure_many`` exports every uncached layer in one ``torch.onnx`` call (independent branches
of one model) and cuts the per-layer models out of it with ``onnx.utils.Extractor``: the
exporter's fixed cost (decompositions, about 0.6 s a call here) is paid once per batch instead
of per layer. On the 20 layers of a MobileNetV2-style CNN that took 0.42 s a layer instead of
1.96 s (fp32; int8 0.49 s vs 1.99 s, quantization itself being cheap), on a loaded machine.
Each layer is still timed alone, in its own session.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from latency_models.measure import DEFAULT_PROTOCOL, Measurement, Protocol, measure
from latency_models.runtimes.base import (
    DTYPES,
    Branches,
    LayerItem,
    Prepared,
    Runtime,
    calibration_batches,
    calibration_digest,
    check_dtype,
    check_items,
    example_input,
    fingerprint,
)
from latency_models.runtimes.cache import ArtifactCache
from latency_models.runtimes.ort_kernels import COPIES as KERNEL_COPIES
from latency_models.runtimes.ort_kernels import KernelSpec, kernel_model, network_kernels, per_copy
from nas.backends import (
    export_program,
    has_vnni,
    onnx_model,
    ort_session_options,
    quantize_onnx_model,
)

__all__ = [
    "NETWORK_RECIPE",
    "OrtCPURuntime",
    "OrtPrepared",
]

log = logging.getLogger(__name__)

_PACKAGES = "onnx, onnxruntime and onnxscript"
NETWORK_RECIPE = "dynamo-export;qdq-u8s8-per-channel-minmax"
"""How a module becomes an ONNX model here: exported with the dynamo exporter; int8 as QDQ, u8
activations and s8 per-channel weights, min-max calibrated."""
_EXTRA = "runtimes"


@dataclass
class OrtPrepared(Prepared):
    session: Any = None

    def __post_init__(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"ort-cpu devices time modules with exactly one tensor input; the exported model "
                f"has inputs {[i.name for i in inputs]}"
            )
        self._input_name: str = inputs[0].name
        self._example_np = self.example.numpy()  # kept alive: the binding points at it
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input_name, self._example_np)
        ort = _import_ort(self.device)
        for out in self.session.get_outputs():
            if all(isinstance(d, int) for d in out.shape):
                value = ort.OrtValue.ortvalue_from_shape_and_type(out.shape, np.float32, "cpu")
                binding.bind_ortvalue_output(out.name, value)
            else:
                binding.bind_output(out.name, "cpu")
        self._binding = binding

    def __call__(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self._input_name: self._check_input(x).numpy()})[0]
        return torch.from_numpy(np.asarray(out))


def _import_ort(device: str) -> ModuleType:
    from latency_models.runtimes.base import require

    require("onnx", device=device, packages=_PACKAGES, extra=_EXTRA)
    require("onnxscript", device=device, packages=_PACKAGES, extra=_EXTRA)
    return require("onnxruntime", device=device, packages=_PACKAGES, extra=_EXTRA)


class OrtCPURuntime(Runtime):
    """ONNX Runtime, CPU execution provider, a fixed intra-op thread count."""

    runtime = "onnxruntime"
    dtypes = DTYPES

    def __init__(
        self,
        name: str = "ort-cpu-1t",
        threads: int = 1,
        *,
        seed: int = 0,
        cache: ArtifactCache | None = None,
        batch_layers: int = 32,
    ) -> None:
        super().__init__(name, threads, seed=seed)
        if batch_layers < 1:
            raise ValueError(f"batch_layers must be >= 1; got {batch_layers}")
        self.cache = cache if cache is not None else ArtifactCache()
        self.batch_layers = batch_layers
        self.reduce_range = not has_vnni()

    @property
    def version(self) -> str:
        return f"onnxruntime {_import_ort(self.name).__version__}"

    def optimized_graph_ops(self, prepared: Prepared) -> dict[str, int]:
        """Node types, with counts, of ONNX Runtime's optimised graph of a prepared model: the
        kernels this session runs, glue included (NCHWc reorders, transposes, quantize and
        dequantize nodes), which a table of lone layers cannot see."""
        import onnx

        ort = _import_ort(self.name)
        if prepared.artifact_path is None or not Path(prepared.artifact_path).is_file():
            raise ValueError(f"{self.name}: the prepared model has no artifact file to optimise")
        with tempfile.TemporaryDirectory(prefix="edge-nas-ort-opt-") as tmp:
            options = self.session_options()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(
                str(prepared.artifact_path), options, providers=["CPUExecutionProvider"]
            )
            graph = onnx.load(options.optimized_model_filepath).graph
        return dict(Counter(node.op_type for node in graph.node))

    def network_kernels(self, prepared: Prepared) -> list[KernelSpec]:
        """The kernels a session of a prepared model runs, in order, each described well
        enough to be rebuilt and timed alone (`ort_kernels`)."""
        ort = _import_ort(self.name)
        if prepared.artifact_path is None or not Path(prepared.artifact_path).is_file():
            raise ValueError(f"{self.name}: the prepared model has no artifact file to optimise")
        return network_kernels(
            ort, prepared.artifact_path, prepared.example.numpy(), self.session_options
        )

    def network_recipe(self, dtype: str) -> dict[str, Any]:
        """What, beside the runtime's version, decides the model a network becomes here (and so
        the kernels a session of it runs): the exporter and quantizer versions and settings."""
        import onnx

        return {
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "recipe": NETWORK_RECIPE,
            "reduce_range": self.reduce_range if dtype == "int8" else None,
            "seed": self.seed,
        }

    def measure_kernels(
        self,
        kernels: Sequence[KernelSpec],
        dtype: str = "fp32",
        protocol: Protocol = DEFAULT_PROTOCOL,
        copies: int = KERNEL_COPIES,
    ) -> list[Measurement]:
        """Time each kernel alone: `copies` copies of its node in one session with graph
        optimisations off, every statistic divided by `copies` (`ort_kernels`)."""
        ort = _import_ort(self.name)
        check_dtype(self.name, dtype, self.dtypes)
        out = []
        for kernel in kernels:
            model, feeds = kernel_model(kernel, copies, seed=self.seed)
            options = self.session_options()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for output in session.get_outputs():
                binding.bind_output(output.name, "cpu")
            m = measure(
                partial(session.run_with_iobinding, binding), protocol, info=self.info(dtype)
            )
            out.append(per_copy(m, copies))
        return out

    def layer_recipe(self, dtype: str) -> str:
        return "int8-inputs-quantized" if dtype == "int8" else ""  # see `_quantize`

    def _fixed_threads(self) -> contextlib.AbstractContextManager[None]:
        # The thread count is a session option, fixed when the session is created.
        return contextlib.nullcontext()

    def session_options(self) -> Any:
        _import_ort(self.name)
        return ort_session_options(self.threads)

    def _key(
        self, ep: Any, shape: tuple[int, ...], dtype: str, calib: str, layer: bool = False
    ) -> str:
        import onnx

        recipe = NETWORK_RECIPE
        if layer and self.layer_recipe(dtype):
            recipe += ";" + self.layer_recipe(dtype)

        return fingerprint(
            ep,
            runtime=self.version,
            onnx=onnx.__version__,
            torch=torch.__version__,
            input_shape=shape,
            dtype=dtype,
            calibration=calib if dtype == "int8" else "",
            reduce_range=self.reduce_range if dtype == "int8" else None,
            recipe=recipe,
        )

    def _meta(
        self, shape: tuple[int, ...], dtype: str, build_s: dict[str, float]
    ) -> dict[str, Any]:
        return {
            "device": self.name,
            "runtime": self.version,
            "input_shape": list(shape),
            "dtype": dtype,
            "reduce_range": self.reduce_range,
            "build_s": build_s,
        }

    def prepare(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Prepared:
        _import_ort(self.name)
        exported = self.export(module, input_shape, dtype)
        shape, x = exported.shape, exported.example
        key = self._key(exported.program, shape, dtype, calibration_digest(calibration, self.seed))
        data = self.cache.load(self.runtime, key, ".onnx")
        build_s: dict[str, float] = {}
        if data is None:
            build_s["torch_export_s"] = exported.export_s
            t1 = time.perf_counter()
            model = onnx_model(exported.program, x, strip=False)
            build_s["onnx_export_s"] = time.perf_counter() - t1
            if dtype == "int8":
                t2 = time.perf_counter()
                batches = calibration_batches(calibration, shape, self.seed)
                model = self._quantize(model, batches)
                build_s["quantize_s"] = time.perf_counter() - t2
            data = model.SerializeToString()
            self.cache.store(self.runtime, key, ".onnx", data, self._meta(shape, dtype, build_s))
        return self._prepared(data, key, shape, dtype, x, cache_hit=not build_s, build_s=build_s)

    def _prepared(
        self,
        data: bytes,
        key: str,
        shape: tuple[int, ...],
        dtype: str,
        x: torch.Tensor,
        *,
        cache_hit: bool,
        build_s: dict[str, float],
    ) -> OrtPrepared:
        ort = _import_ort(self.name)
        t0 = time.perf_counter()
        session = ort.InferenceSession(
            data, self.session_options(), providers=["CPUExecutionProvider"]
        )
        build_s = {**build_s, "session_s": time.perf_counter() - t0}
        return OrtPrepared(
            device=self.name,
            dtype=dtype,
            input_shape=shape,
            example=x,
            artifact_path=self.cache.path(self.runtime, key, ".onnx"),
            cache_hit=cache_hit,
            build_s=build_s,
            session=session,
        )

    def _quantize(self, model: Any, batches: list[torch.Tensor], layer: bool = False) -> Any:
        # No pre-processing: the recipe in the cache key ("qdq-u8s8-per-channel-minmax") is
        # quantization of the exported graph as it is, and the timed LUTs were built that way.
        # A LUT layer (`layer`) has its input quantized even where ONNX Runtime would leave the
        # op in fp32 for want of a quantized input: inside an int8 network, the op before it
        # is quantized, so an average pool, an addition or a zero-multiply (nb201's "none")
        # runs as QLinearAveragePool / QLinearAdd / QLinearMul there. Without it, the lone
        # average pool of nb201 ran as an fp32 AveragePool, several times faster than its int8
        # self in the network, and the LUT sum missed the int8 networks (tau 0.26).
        return quantize_onnx_model(
            model,
            batches,
            per_channel=True,
            reduce_range=self.reduce_range,
            preprocess=False,
            force_inputs=layer,
        )

    def measure_many(
        self,
        items: Sequence[LayerItem],
        dtype: str = "fp32",
        protocol: Protocol = DEFAULT_PROTOCOL,
    ) -> list[Measurement]:
        """Build uncached layers batch-wise (one export per ``batch_layers``), time each alone."""
        checked = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        _import_ort(self.name)
        out: list[Measurement] = []
        for start in range(0, len(checked), self.batch_layers):
            for prepared in self.prepare_many(checked[start : start + self.batch_layers], dtype):
                out.append(self.measure_prepared(prepared, protocol))
        return out

    def compile_many(self, items: Sequence[LayerItem], dtype: str = "fp32") -> int:
        """:meth:`measure_many`'s sessions built into the cache (one shared export), timing
        nothing; returns how many were built now."""
        return sum(not p.cache_hit for p in self.prepare_many(items, dtype))

    def prepare_many(self, items: Sequence[LayerItem], dtype: str = "fp32") -> list[OrtPrepared]:
        """One prepared session per layer; the cache misses share one ONNX export."""
        checked = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        calib = calibration_digest(None, self.seed)
        xs = [example_input(shape, self.seed) for _, shape in checked]
        t0 = time.perf_counter()
        keys = [
            self._key(export_program(m, x), shape, dtype, calib, layer=True)
            for (m, shape), x in zip(checked, xs, strict=True)
        ]
        keys_s = time.perf_counter() - t0
        data: list[bytes | None] = [self.cache.load(self.runtime, k, ".onnx") for k in keys]
        missing = [i for i, d in enumerate(data) if d is None]
        builds: dict[int, dict[str, float]] = {}
        if missing:
            t1 = time.perf_counter()
            models = _export_branches([checked[i][0] for i in missing], [xs[i] for i in missing])
            export_s = (time.perf_counter() - t1) / len(missing)
            for i, model in zip(missing, models, strict=True):
                build_s = {"torch_export_s": keys_s / len(checked), "onnx_export_s": export_s}
                if dtype == "int8":
                    t2 = time.perf_counter()
                    batches = calibration_batches(None, checked[i][1], self.seed)
                    model = self._quantize(model, batches, layer=True)
                    build_s["quantize_s"] = time.perf_counter() - t2
                blob = model.SerializeToString()
                self.cache.store(
                    self.runtime, keys[i], ".onnx", blob, self._meta(checked[i][1], dtype, build_s)
                )
                data[i] = blob
                builds[i] = build_s
            log.info(
                "%s: exported %d layers in one ONNX export (%.2f s per layer)",
                self.name,
                len(missing),
                export_s,
            )
        prepared = []
        for i, ((_, shape), x) in enumerate(zip(checked, xs, strict=True)):
            blob = data[i]
            assert blob is not None
            prepared.append(
                self._prepared(
                    blob,
                    keys[i],
                    shape,
                    dtype,
                    x,
                    cache_hit=i not in builds,
                    build_s=builds.get(i, {}),
                )
            )
        return prepared


def _export_branches(modules: Sequence[nn.Module], xs: Sequence[torch.Tensor]) -> list[Any]:
    """Per-layer ONNX models cut out of one export of all layers side by side."""
    if len(modules) == 1:
        return [onnx_model(modules[0], xs[0], strip=False)]
    import onnx.utils

    args = tuple(xs)
    model = onnx_model(Branches(modules), args, strip=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != len(modules) or len(outputs) != len(modules):
        raise RuntimeError(
            f"batched ONNX export of {len(modules)} layers must have one input and one output per "
            f"layer; got inputs {inputs} and outputs {outputs} (does a layer return its input "
            "or several tensors?)"
        )
    extractor = onnx.utils.Extractor(model)
    return [extractor.extract_model([i], [o]) for i, o in zip(inputs, outputs, strict=True)]

"""ExecuTorch with the XNNPACK delegate (``xnnpack-1t``): the runtime that phones use.

Build: ``torch.export`` -> (int8: PT2E ``prepare_pt2e`` with ``XNNPACKQuantizer`` and the
symmetric per-channel config, calibrate, ``convert_pt2e``, export again) ->
``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` -> ``to_executorch`` -> ``.pte``
bytes, cached on disk by content hash. Run: ExecuTorch's Python runtime (the ``portable_lib``
pybindings), inputs set once, a timed run is one ``execute()`` of the loaded method.

Threads. ExecuTorch has one process-wide pthreadpool, created on first use with one thread per
CPU that cpuinfo reports (2 here). ``portable_lib._unsafe_reset_threadpool(n)`` (experimental)
replaces it and ``portable_lib._threadpool_get_thread_count()`` reads it; there is no per-program
setting. The XNNPACK delegate hands the pool's pointer to ``xnn_create_runtime`` when a method is
*loaded*, so resizing destroys the pool that already-loaded methods still point at. The pool is
sized, and its resizes counted, in one place for the whole project
(:func:`nas.backends.set_executorch_threads`); a program (``LoadedProgram``) is loaded
after sizing the pool and reloaded before running when the pool was replaced since. Devices with
different thread counts can share a process with each other and with the compression chain's
runners, but alternating between them reloads methods.

Batched LUT builds (``measure_many``): many layers lowered as one program, each timed by
ExecuTorch's event tracer (:mod:`latency_models.runtimes.xnnpack_batch`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from latency_models.measure import DEFAULT_PROTOCOL, Measurement, Protocol, measure_rounds
from latency_models.runtimes.base import (
    DTYPES,
    LUT_CALIBRATION_BATCHES,
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
    require,
)
from latency_models.runtimes.cache import ArtifactCache
from latency_models.runtimes.xnnpack_batch import (
    XnnpackBatch,
    _branch_partitioner,
    _delegate_layers,
    delegate_times_ms,
)
from nas.backends import LoadedProgram, export_program, lower_program, set_executorch_threads

__all__ = [
    "XnnpackPrepared",
    "XnnpackRuntime",
]

log = logging.getLogger(__name__)

_PACKAGES = "executorch (with its XNNPACK backend) and torchao"
_EXTRA = "executorch"
_RECIPE = "xnnpack-partitioner;int8=pt2e-xnnpack-symmetric-per-channel"


def _portable_lib(device: str) -> ModuleType:
    require("torchao", device=device, packages=_PACKAGES, extra=_EXTRA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental API" warning on import
        return require(
            "executorch.extension.pybindings.portable_lib",
            device=device,
            packages=_PACKAGES,
            extra=_EXTRA,
        )


@dataclass
class XnnpackPrepared(Prepared):
    pte: bytes = b""
    threads: int = 1
    _loaded: LoadedProgram | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._loaded = LoadedProgram(self.pte, (self.example,), self.threads)

    @property
    def loaded(self) -> LoadedProgram:
        assert self._loaded is not None
        return self._loaded.fresh()

    def __call__(self) -> None:
        self.loaded.execute()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.loaded.run(self._check_input(x))[0]


def _quantize(
    ep: Any, args: tuple[torch.Tensor, ...], batches: Sequence[tuple[torch.Tensor, ...]]
) -> Any:
    """PT2E int8 with the compression chain's quantizer (XNNPACK, symmetric, per-channel
    weights) and converter: prepare, calibrate, convert, export again."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from nas.backends import convert, xnnpack_quantizer

    observed = prepare_pt2e(ep.module(), xnnpack_quantizer(is_qat=False, per_channel=True))
    allow_exported_model_train_eval(observed)  # convert() switches it to eval mode
    with torch.no_grad():
        for batch in batches:
            observed(*batch)
    return torch.export.export(convert(observed), args)


class XnnpackRuntime(Runtime):
    """ExecuTorch + XNNPACK delegate, its threadpool sized to ``threads`` while in use."""

    runtime = "executorch-xnnpack"
    dtypes = DTYPES

    def __init__(
        self,
        name: str = "xnnpack-1t",
        threads: int = 1,
        *,
        seed: int = 0,
        cache: ArtifactCache | None = None,
        batch_layers: int = 32,
        batched: bool = True,
    ) -> None:
        super().__init__(name, threads, seed=seed)
        if batch_layers < 1:
            raise ValueError(f"batch_layers must be >= 1; got {batch_layers}")
        self.cache = cache if cache is not None else ArtifactCache()
        self.batch_layers = batch_layers
        self.batched = batched

    @property
    def version(self) -> str:
        _portable_lib(self.name)
        from executorch.version import __version__ as et_version

        return f"executorch {et_version} (XNNPACK delegate)"

    @contextlib.contextmanager
    def _pool(self) -> Iterator[None]:
        _portable_lib(self.name)  # says what to install where executorch is missing
        before = set_executorch_threads(self.threads)
        try:
            yield
        finally:
            # Restoring the size the process had keeps other ExecuTorch users unsurprised; our
            # own artifacts notice the resize and reload before their next run.
            set_executorch_threads(before)

    def _fixed_threads(self) -> contextlib.AbstractContextManager[None]:
        return self._pool()

    def measure_prepared(
        self, prepared: Prepared, protocol: Protocol = DEFAULT_PROTOCOL
    ) -> Measurement:
        with self._pool():
            if isinstance(prepared, XnnpackPrepared):
                prepared.loaded  # noqa: B018 - reload now, outside the timed runs
            return super().measure_prepared(prepared, protocol)

    def _key(
        self, ep: Any, shapes: Sequence[tuple[int, ...]], dtype: str, calib: str, kind: str
    ) -> str:
        import torchao

        return fingerprint(
            ep,
            runtime=self.version,
            torch=torch.__version__,
            torchao=torchao.__version__,
            input_shapes=tuple(shapes),
            dtype=dtype,
            calibration=calib if dtype == "int8" else "",
            recipe=_RECIPE,
            kind=kind,
        )

    def prepare(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Prepared:
        _portable_lib(self.name)
        exported = self.export(module, input_shape, dtype)
        shape, x, ep = exported.shape, exported.example, exported.program
        key = self._key(ep, [shape], dtype, calibration_digest(calibration, self.seed), "single")
        pte = self.cache.load(self.runtime, key, ".pte")
        build_s: dict[str, float] = {}
        if pte is None:
            build_s["export_s"] = exported.export_s
            if dtype == "int8":
                t1 = time.perf_counter()
                batches = [(b,) for b in calibration_batches(calibration, shape, self.seed)]
                ep = _quantize(ep, (x,), batches)
                build_s["quantize_s"] = time.perf_counter() - t1
            lowered = lower_program(ep)
            pte = lowered.data
            build_s.update(lowered.stages_s)
            self.cache.store(
                self.runtime,
                key,
                ".pte",
                pte,
                {
                    "device": self.name,
                    "runtime": self.version,
                    "input_shape": list(shape),
                    "dtype": dtype,
                    "build_s": build_s,
                },
            )
            log.info(
                "%s: lowered %s %s in %.2f s",
                self.name,
                type(module).__name__,
                dtype,
                sum(build_s.values()),
            )
        return XnnpackPrepared(
            device=self.name,
            dtype=dtype,
            input_shape=shape,
            example=x,
            artifact_path=self.cache.path(self.runtime, key, ".pte"),
            cache_hit=not build_s,
            build_s=build_s,
            pte=pte,
            threads=self.threads,
        )

    def prepare_batch(self, items: Sequence[LayerItem], dtype: str = "fp32") -> XnnpackBatch:
        """Lower many independent layers into one program, one delegate per layer (cached)."""
        checked = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        _portable_lib(self.name)
        if not checked:
            raise ValueError("prepare_batch needs at least one (module, input_shape) item")
        shapes = [shape for _, shape in checked]
        xs = tuple(example_input(shape, self.seed) for shape in shapes)
        model = Branches([m for m, _ in checked])
        t0 = time.perf_counter()
        ep = export_program(model, xs)
        export_s = time.perf_counter() - t0
        calib = calibration_digest(None, self.seed, LUT_CALIBRATION_BATCHES)
        key = self._key(ep, shapes, dtype, calib, "batch")
        pte = self.cache.load(self.runtime, key, ".pte")
        meta = self.cache.load_meta(self.runtime, key, ".pte")
        build_s: dict[str, float] = {}
        if pte is None or meta is None or "delegate_layers" not in meta:
            build_s["export_s"] = export_s
            if dtype == "int8":
                t1 = time.perf_counter()
                per_layer = [
                    calibration_batches(None, shape, self.seed, LUT_CALIBRATION_BATCHES)
                    for shape in shapes
                ]
                batches = list(zip(*per_layer, strict=True))
                ep = _quantize(ep, xs, batches)
                build_s["quantize_s"] = time.perf_counter() - t1
            lowered = lower_program(ep, _branch_partitioner())
            pte = lowered.data
            build_s.update(lowered.stages_s)
            calls, unbatched = _delegate_layers(lowered.graph_module, len(checked))
            meta = {
                "device": self.name,
                "runtime": self.version,
                "input_shapes": [list(s) for s in shapes],
                "dtype": dtype,
                "build_s": build_s,
                "delegate_layers": calls,
                "unbatched": unbatched,
            }
            self.cache.store(self.runtime, key, ".pte", pte, meta)
            log.info(
                "%s: lowered %d layers (%s) as one program in %.2f s (%.2f s per layer)",
                self.name,
                len(checked),
                dtype,
                sum(build_s.values()),
                sum(build_s.values()) / len(checked),
            )
        return XnnpackBatch(
            device=self.name,
            dtype=dtype,
            input_shapes=shapes,
            examples=list(xs),
            pte=pte,
            delegate_layers=[int(i) for i in meta["delegate_layers"]],
            unbatched=[int(i) for i in meta["unbatched"]],
            artifact_path=self.cache.path(self.runtime, key, ".pte"),
            cache_hit=not build_s,
            build_s=build_s,
        )

    def measure_batch(
        self, batch: XnnpackBatch, protocol: Protocol = DEFAULT_PROTOCOL
    ) -> list[Measurement | None]:
        """Per-layer times from one batched program's ETDump; ``None`` for unbatched layers."""
        if batch.device != self.name:
            raise ValueError(f"batch was prepared by device {batch.device!r}, not {self.name!r}")
        results: list[Measurement | None] = [None] * len(batch.input_shapes)
        usable = [i for i in batch.delegate_layers if i not in batch.unbatched]
        if not usable:
            return results
        with self._pool(), tempfile.TemporaryDirectory(prefix="edge-nas-etdump-") as tmp:
            loaded = LoadedProgram(batch.pte, batch.examples, self.threads, etdump=True)
            etdump_path, debug_path = str(Path(tmp) / "run.etdp"), str(Path(tmp) / "debug.bin")

            def run(n: int) -> np.ndarray:
                loaded.fresh()
                for _ in range(n):
                    loaded.execute()
                # Writing the dump also clears the tracer, so each call sees only its n runs.
                loaded.program.write_etdump_result_to_file(etdump_path, debug_path)
                times = delegate_times_ms(Path(etdump_path).read_bytes())
                return times[-n:]

            # Drop what loading recorded, so the first dump holds runs only.
            loaded.program.write_etdump_result_to_file(etdump_path, debug_path)
            columns = measure_rounds(
                run, len(batch.delegate_layers), protocol, info=self.info(batch.dtype)
            )
        for layer, m in zip(batch.delegate_layers, columns, strict=True):
            if layer in usable:
                results[layer] = m
        return results

    def compile_many(self, items: Sequence[LayerItem], dtype: str = "fp32") -> int:
        """:meth:`measure_many`'s programs (batches, and the layers a batch cannot time, alone)
        compiled into the cache, timing nothing; returns how many were built now."""
        checked = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        if not self.batched:
            return super().compile_many(checked, dtype)
        built = 0
        for start in range(0, len(checked), self.batch_layers):
            chunk = checked[start : start + self.batch_layers]
            try:
                batch = self.prepare_batch(chunk, dtype)
            except Exception:  # measure_many then times each layer alone: compile those
                alone = list(range(len(chunk)))
            else:
                built += not batch.cache_hit
                usable = set(batch.delegate_layers) - set(batch.unbatched)
                alone = [i for i in range(len(chunk)) if i not in usable]
            for i in alone:
                built += not self.prepare(chunk[i][0], chunk[i][1], dtype).cache_hit
        return built

    def measure_many(
        self,
        items: Sequence[LayerItem],
        dtype: str = "fp32",
        protocol: Protocol = DEFAULT_PROTOCOL,
    ) -> list[Measurement]:
        """Time layers ``batch_layers`` at a time in one lowered program each (module doc)."""
        checked = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        if not self.batched:
            return super().measure_many(checked, dtype, protocol)
        out: list[Measurement] = []
        for start in range(0, len(checked), self.batch_layers):
            chunk = checked[start : start + self.batch_layers]
            results: list[Measurement | None]
            try:
                batch = self.prepare_batch(chunk, dtype)
            except Exception as err:  # lowering fails with many exception types
                log.warning(
                    "%s: lowering layers %d..%d as one program failed (%s: %s); timing each alone",
                    self.name,
                    start,
                    start + len(chunk) - 1,
                    type(err).__name__,
                    err,
                )
                results = [None] * len(chunk)
            else:
                results = self.measure_batch(batch, protocol)
            for i, m in enumerate(results):
                if m is None:
                    log.info(
                        "%s: layer %d (%s) is not one XNNPACK delegate in the batched program; "
                        "timing it alone",
                        self.name,
                        start + i,
                        type(chunk[i][0]).__name__,
                    )
                    m = self.measure_module(chunk[i][0], chunk[i][1], dtype, None, protocol)
                out.append(m)
        return out

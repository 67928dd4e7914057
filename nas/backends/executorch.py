"""ExecuTorch ``.pte`` programs lowered to XNNPACK, loaded and run, and ExecuTorch's thread pool.

``torch.export`` -> ``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` ->
``to_executorch``. An fp32 module gives an fp32 program; a PT2E int8 model
(:func:`nas.compress.qat.convert`) gives an int8 one, because the partitioner turns its
quantize / dequantize patterns into XNNPACK's int8 operators. The latency runtime
``latency_models.runtimes.xnnpack`` builds on :func:`export_program`, :func:`lower_program`,
:class:`LoadedProgram` and the thread pool below.

ExecuTorch's runtime has one process-wide thread pool (created on first use with one thread per
CPU); ``portable_lib._unsafe_reset_threadpool(n)`` replaces it, and a loaded method keeps a
pointer to the pool it was loaded under, which a resize frees. :func:`set_executorch_threads` is
the one place that resizes it and counts resizes (:func:`executorch_pool_generation`); a
:class:`LoadedProgram` remembers the generation it was loaded under and reloads before running
when the pool has been replaced since. Resize through :func:`set_executorch_threads` only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.backends.artifact import _artifact_file, _check, _unloadable, _write
from nas.backends.quiet import quiet_exporters
from nas.backends.torch_export import export_program

__all__ = [
    "LoadedProgram",
    "LoweredProgram",
    "PteRunner",
    "executorch_pool_generation",
    "executorch_threads",
    "export_pte",
    "lower_program",
    "lower_to_pte",
    "set_executorch_threads",
]

log = logging.getLogger(__name__)


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
        with quiet_exporters():  # the first import brings executorch's and torchao's chatter
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
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
    with quiet_exporters():
        from executorch.exir import to_edge_transform_and_lower

        t0 = time.perf_counter()
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
        with quiet_exporters():
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
        with quiet_exporters():
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


class PteRunner:
    """An ExecuTorch ``.pte`` loaded with the XNNPACK thread pool sized to ``threads``."""

    runtime = "executorch-xnnpack"

    def __init__(
        self, path: str | os.PathLike[str], input_shape: Sequence[int], threads: int = 1
    ) -> None:
        what = "an ExecuTorch program (.pte)"
        self.path = _artifact_file(path, what)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.threads = threads
        data = self.path.read_bytes()
        if data[4:6] != b"ET":  # the flatbuffer's file identifier, "ET12" today
            raise _unloadable(self.path, what, ValueError(f"no 'ET..' identifier: {data[:8]!r}"))
        try:
            self.loaded = LoadedProgram(data, (torch.zeros(self.input_shape),), threads)
        except RuntimeError as err:  # "Failed to load program, error: 0x23"
            raise _unloadable(self.path, what, err) from None

    def __call__(self) -> None:
        self.loaded.execute()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.loaded.run(_check(self, x))[0]

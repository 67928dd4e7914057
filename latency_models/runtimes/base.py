"""A runtime (the engine behind a real device): the common shape, and the helpers all share.

Artifacts themselves (``torch.export``, lowering, ONNX export and quantization, loading a
``.pte``, ExecuTorch's thread pool) are made by :mod:`nas.backends`, the one place that
makes them; the runtimes add caching, timing and batched LUT builds on top.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from latency_models.measure import DEFAULT_PROTOCOL, Measurement, Protocol, RunInfo, measure
from nas.backends import export_program

if TYPE_CHECKING:
    from torch.export import ExportedProgram

__all__ = [
    "CALIBRATION_BATCHES",
    "DTYPES",
    "LUT_CALIBRATION_BATCHES",
    "Branches",
    "Exported",
    "LayerItem",
    "Prepared",
    "Runtime",
    "RuntimeUnavailableError",
    "calibration_batches",
    "calibration_digest",
    "check_dtype",
    "check_items",
    "check_shape",
    "example_input",
    "fingerprint",
    "require",
]

log = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("fp32", "int8")
"""Every dtype name a real device may support; each device lists its own in ``dtypes``."""

CALIBRATION_BATCHES = 8
"""Batches of seeded standard-normal data used for int8 calibration when none is given."""

LUT_CALIBRATION_BATCHES = 2
"""Calibration batches for layers timed in a LUT build: scales do not change a kernel's speed,
and XNNPACK's histogram observers make calibration a large share of a batched build."""

LayerItem = tuple[nn.Module, tuple[int, ...]]
"""One entry of ``measure_many``: a module and the input shape to time it at."""


class RuntimeUnavailableError(ImportError):
    """A runtime's Python package is missing; the message names the extra to install."""


def require(module_name: str, *, device: str, packages: str, extra: str) -> ModuleType:
    """Import ``module_name`` or raise :class:`RuntimeUnavailableError` saying what to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeUnavailableError(
            f"device {device!r} needs {packages}, but importing {module_name!r} failed ({err}). "
            f"Install them with: pip install 'edge-nas[{extra}]'"
        ) from err


def check_dtype(device: str, dtype: str, supported: Sequence[str]) -> str:
    if dtype not in supported:
        raise ValueError(
            f"device {device!r} cannot run dtype {dtype!r}; valid dtypes: {list(supported)}"
        )
    return dtype


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            "input_shape must be a non-empty tuple of positive ints with the batch first, "
            f"e.g. (1, 3, 224, 224); got {input_shape!r}"
        )
    return shape


def example_input(input_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded standard-normal input; its values do not change the cost of dense layers."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(input_shape, generator=gen)  # input_shape


def calibration_batches(
    calibration: torch.Tensor | None,
    input_shape: tuple[int, ...],
    seed: int,
    n_random: int = CALIBRATION_BATCHES,
) -> list[torch.Tensor]:
    """Split ``calibration`` (k * batch samples) into k batches of ``input_shape``.

    ``None`` gives ``n_random`` batches of seeded standard-normal data.
    """
    if calibration is None:
        gen = torch.Generator().manual_seed(seed + 1)
        return [torch.randn(input_shape, generator=gen) for _ in range(n_random)]
    batch = input_shape[0]
    ok = (
        isinstance(calibration, torch.Tensor)
        and calibration.dim() == len(input_shape)
        and tuple(calibration.shape[1:]) == input_shape[1:]
        and calibration.shape[0] >= batch
        and calibration.shape[0] % batch == 0
    )
    if not ok:
        got = (
            tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration)
        )
        raise ValueError(
            f"calibration must be a float tensor of shape (k * {batch}, *{input_shape[1:]}) for "
            f"input_shape {input_shape}, k >= 1; got {got}"
        )
    data = calibration.detach().to(torch.float32).cpu()
    return list(data.split(batch))


def calibration_digest(
    calibration: torch.Tensor | None, seed: int, n_random: int = CALIBRATION_BATCHES
) -> str:
    if calibration is None:
        return f"randn-seed{seed + 1}-n{n_random}"
    data = calibration.detach().to(torch.float32).cpu().contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest() + str(tuple(data.shape))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def fingerprint(ep: ExportedProgram, **parts: object) -> str:
    """Content hash of an exported program (graph, signature, weights) and the given parts."""
    h = hashlib.sha256()
    h.update(str(ep.graph_module.graph).encode())
    h.update(str(ep.graph_signature).encode())
    tensors: dict[str, torch.Tensor] = {**ep.state_dict}
    tensors.update({k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)})
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    for key in sorted(parts):
        h.update(f"|{key}={parts[key]!r}".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Exported:
    """A module exported for one input shape: what every runtime's ``prepare`` starts from."""

    shape: tuple[int, ...]
    example: torch.Tensor
    program: ExportedProgram
    export_s: float


class Branches(nn.Module):
    """Independent layers side by side: input i goes through layer i to output i.

    Exporting or lowering one of these pays the fixed per-program cost once for many layers.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(layer(x) for layer, x in zip(self.layers, xs, strict=True))


@dataclass
class Prepared(ABC):
    """One module compiled for one runtime, input shape and dtype, ready to run.

    Calling it runs one inference on its stored example input: that is what gets timed. Keep it
    to time again without rebuilding; ``artifact_path`` is the on-disk artifact (if any) and
    ``build_s`` says where the build time went (empty on a cache hit).
    """

    device: str
    dtype: str
    input_shape: tuple[int, ...]
    example: torch.Tensor
    artifact_path: Path | None = None
    cache_hit: bool = False
    build_s: dict[str, float] = field(default_factory=dict)

    @abstractmethod
    def __call__(self) -> None:
        """Run once on the stored example input."""

    @abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (shape ``input_shape``), for correctness checks."""

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.input_shape:
            raise ValueError(
                f"{self.device} artifact was built for input shape {self.input_shape}; "
                f"got {tuple(x.shape)} (export fixes every dimension, the batch included)"
            )
        return x.detach().to(torch.float32).contiguous()


class Runtime(ABC):
    """An engine on this machine that can time one layer or a whole network: what a
    :class:`latency_models.RealDevice` runs on (not a device itself).

    ``name`` is the device the runtime times for: measurements, artifacts and errors carry it.
    Subclasses set ``runtime`` and ``dtypes`` and implement ``version``, ``prepare`` and
    ``_fixed_threads``; ``measure_module`` and ``measure_many`` follow from them.
    """

    runtime: str = ""
    dtypes: tuple[str, ...] = ("fp32",)

    def __init__(self, name: str, threads: int = 1, *, seed: int = 0) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1; got {threads!r}")
        self.name = name
        self.threads = threads
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threads={self.threads})"

    @property
    @abstractmethod
    def version(self) -> str:
        """Runtime name and version as recorded in measurements (raises if not installed)."""

    def layer_recipe(self, dtype: str) -> str:
        """How a lone layer is built for timing, where that departs from the first recipe in
        a way that changes its times (part of a LUT's identity, so tables timed the old way
        refuse to mix); empty for the first recipe."""
        return ""

    def available(self) -> bool:
        """Whether the runtime's packages can be imported."""
        try:
            self.version  # noqa: B018 - importing is the check
        except RuntimeUnavailableError:
            return False
        return True

    @abstractmethod
    def prepare(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Prepared:
        """Compile ``module`` for ``input_shape`` and ``dtype`` (int8: calibrate on
        ``calibration``, shape ``(k * batch, *input_shape[1:])``, or seeded random data)."""

    def export(self, module: nn.Module, input_shape: tuple[int, ...], dtype: str) -> Exported:
        """Check ``dtype`` and ``input_shape``, then ``torch.export`` ``module`` at that shape on
        the device's seeded example input (:func:`nas.backends.export_program`)."""
        check_dtype(self.name, dtype, self.dtypes)
        shape = check_shape(input_shape)
        x = example_input(shape, self.seed)
        t0 = time.perf_counter()
        ep = export_program(module, x)
        return Exported(shape, x, ep, time.perf_counter() - t0)

    @abstractmethod
    def _fixed_threads(self) -> contextlib.AbstractContextManager[None]:
        """Fix the runtime's thread count to ``self.threads`` while measuring, then restore."""

    def info(self, dtype: str) -> RunInfo:
        return RunInfo(
            device=self.name,
            runtime=self.runtime,
            runtime_version=self.version,
            threads=self.threads,
            dtype=dtype,
        )

    def measure_prepared(
        self, prepared: Prepared, protocol: Protocol = DEFAULT_PROTOCOL
    ) -> Measurement:
        """Time a prepared artifact with the protocol of :mod:`latency_models.measure`."""
        if prepared.device != self.name:
            raise ValueError(
                f"artifact was prepared by device {prepared.device!r}, not {self.name!r}"
            )
        with self._fixed_threads():
            return measure(prepared, protocol, info=self.info(prepared.dtype))

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
        protocol: Protocol = DEFAULT_PROTOCOL,
    ) -> Measurement:
        """Prepare (or load from cache) and time ``module`` at ``input_shape``."""
        return self.measure_prepared(
            self.prepare(module, input_shape, dtype, calibration), protocol
        )

    def measure_many(
        self,
        items: Sequence[LayerItem],
        dtype: str = "fp32",
        protocol: Protocol = DEFAULT_PROTOCOL,
    ) -> list[Measurement]:
        """Time many independent layers (for a LUT); one :class:`Measurement` per item, in order.

        int8 layers are calibrated on seeded random data. The base version loops over
        :meth:`measure_module`; runtimes with a large fixed build cost batch the build.
        """
        items = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        return [self.measure_module(m, shape, dtype, None, protocol) for m, shape in items]

    def compile_many(self, items: Sequence[LayerItem], dtype: str = "fp32") -> int:
        """Compile into the artifact cache what :meth:`measure_many` would time, timing
        nothing (lowering can run ahead, on other cores, of a measuring run that must be
        quiet); returns how many artifacts were built now rather than found in the cache."""
        items = check_items(items)
        check_dtype(self.name, dtype, self.dtypes)
        return sum(not self.prepare(m, shape, dtype).cache_hit for m, shape in items)


def check_items(items: Sequence[LayerItem]) -> list[tuple[nn.Module, tuple[int, ...]]]:
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module)):
            raise TypeError(
                f"measure_many needs a sequence of (nn.Module, input_shape) pairs; "
                f"item {i} is {type(item).__name__}"
            )
        out.append((item[0], check_shape(item[1])))
    return out

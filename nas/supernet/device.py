"""Devices and mixed precision for every training loop: pick a device, autocast, scale, step.

One helper for the supernet loop and the loops above it (knowledge distillation, QAT, the
hardware-aware, on-device and federated loops): `execution(device, precision)` is the
`Precision` a loop trains with, on the device `resolve_device` checked to be there (it turns
``auto | cpu | cuda | cuda:N | mps`` into a device, or says which are); `Precision` moves
batches there (`to`), runs the forward passes under autocast (bf16, or fp16 with a gradient
scaler on CUDA) and makes the optimizer step; `fits_memory` (or `out_of_memory`) turns a batch
that does not fit into an error that says what to try.
It lives in nas.supernet, the lowest package that trains and that every training loop may
import (tests/test_layout.py: hwtrain, compress, ondevice and federated all sit above it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PRECISIONS",
    "DeviceError",
    "OutOfMemory",
    "Precision",
    "available_devices",
    "compile_model",
    "execution",
    "fits_memory",
    "out_of_memory",
    "resolve_device",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device that is not there, or a precision it cannot run; the message lists the choices."""


class OutOfMemory(RuntimeError):
    """A batch that did not fit the device's memory; the message says what to try instead.

    `batch_size` is the batch that did not fit, `fitted` the largest that did (0: unknown),
    `device` where: a caller that knows the names of its settings (a run config's keys) may
    say them."""

    def __init__(self, message: str, device: str = "", batch_size: int = 0, fitted: int = 0):
        super().__init__(message)
        self.device, self.batch_size, self.fitted = device, batch_size, fitted


def available_devices() -> list[str]:
    """The devices this process can use: cpu, each cuda:N, mps."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The device `spec` names, checked to be there: ``auto`` (or None) is this process's GPU
    (``cuda:<local_rank>``) when CUDA is there, else ``mps`` when there, else the CPU;
    ``cuda`` is ``cuda:<local_rank>``. A device that is not there raises `DeviceError` naming
    the ones that are."""
    available = available_devices()
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps" if "mps" in available else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"device {str(spec)!r} is not a device name; use auto, cpu, cuda, cuda:N or mps "
            f"(here: {', '.join(available)})"
        ) from exc
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    name = str(device)
    if device.type in ("cuda", "mps") and name not in available:
        raise DeviceError(
            f"device {name!r} is not there; this machine has: {', '.join(available)}"
            + ("" if torch.cuda.is_available() else " (this torch sees no CUDA GPU)")
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device type {device.type!r} is not supported; use cpu, cuda or mps")
    return device


def _check_precision(name: str, device: torch.device) -> None:
    if name not in PRECISIONS:
        raise DeviceError(f"precision must be one of {list(PRECISIONS)}; got {name!r}")
    if name == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 autocast needs a GPU (cuda or mps); on the CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{device} does not support bf16; use fp16 (with a scaler) or fp32")


@dataclass
class Precision:
    """Forward passes under autocast at `name` (fp32: none), backward and the optimizer step.

    fp16 on CUDA scales the loss (a `torch.amp.GradScaler`) so small gradients survive; bf16
    has fp32's range and needs none. A module that must stay in fp32 (QAT's fake quantisers)
    runs under `full()`, which turns autocast off inside the block.
    """

    name: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scaler: Any = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        _check_precision(self.name, self.device)
        if self.name == "fp16" and self.device.type == "cuda" and self.scaler is None:
            self.scaler = torch.amp.GradScaler("cuda")

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def to(self, x: Tensor) -> Tensor:
        """`x` on this device (a no-op when it is there; asynchronous from pinned memory)."""
        return x.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast at this precision on this device (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def full(self) -> contextlib.AbstractContextManager[Any]:
        """A block in fp32 even inside `autocast()` (QAT stays out of autocast)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def backward(self, loss: Tensor) -> None:
        """`loss.backward()`, scaled when a gradient scaler is in use."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[nn.Parameter] = (),
        clip_norm: float | None = None,
    ) -> None:
        """Clip the gradients (unscaled first) to `clip_norm` when given, then step."""
        if self.scaler is not None:
            if clip_norm is not None:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(list(params), clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(list(params), clip_norm)
        optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (JSON-able numbers), for a checkpoint; empty without a scaler."""
        if self.scaler is None:
            return {}
        return dict(self.scaler.state_dict())  # floats and ints (growth_interval stays an int)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scaler's state; a checkpoint of another precision leaves it fresh."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def execution(
    device: str | torch.device | None = "auto", precision: str = "fp32", local_rank: int = 0
) -> Precision:
    """What a training loop runs with: `precision` on the device `device` names, checked to be
    there (`resolve_device`; `DeviceError` names the devices that are) and to run it."""
    return Precision(precision, resolve_device(device, local_rank))


def compile_model(model: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(model)` when enabled (same weights, compiled forward), else the model."""
    if not enabled:
        return model
    compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
    return compiled


def out_of_memory(
    exc: BaseException,
    device: torch.device,
    batch_size: int,
    fitted: int,
    remedy: str = "",
) -> bool:
    """Whether `exc` is the device running out of memory; if so, raise `OutOfMemory` saying
    the batch size that did not fit, the largest that did (`fitted`, 0 when none is known) and
    what to do (`remedy`; by default a smaller batch_size with a larger accumulate)."""
    if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc):
        return False
    known = (
        f"; the largest that did was {fitted}"
        if fitted
        else "; no smaller batch was tried in this run"
    )
    remedy = remedy or (
        f"Lower batch_size (e.g. {max(1, batch_size // 2)}) and raise accumulate by as much to "
        "keep the effective batch, or use precision bf16"
    )
    raise OutOfMemory(
        f"a batch of {batch_size} images does not fit the memory of {device}{known}. {remedy}",
        str(device),
        batch_size,
        fitted,
    ) from exc


@contextlib.contextmanager
def fits_memory(
    device: torch.device, batch_size: int, fitted: int = 0, remedy: str = ""
) -> Iterator[None]:
    """Run the block; the device running out of memory in it raises `OutOfMemory` (see
    `out_of_memory`) instead of torch's error, which names neither the batch nor a remedy."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if not out_of_memory(exc, device, batch_size, fitted, remedy):
            raise

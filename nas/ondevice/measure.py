"""The training-memory model checked against measurements: the ExecuTorch training program's
memory plan (the reference: what the device allocates) and the bytes eager PyTorch's autograd
keeps (reported beside it: eager keeps a convolution's input whether or not its weight trains).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nas.backends import TrainingProgram, export_training_program
from nas.ondevice.memory import TrainingMemory
from nas.ondevice.plans import UpdatePlan

__all__ = ["MemoryCheck", "check_memory", "eager_saved_bytes"]


def eager_saved_bytes(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one cross-entropy step of `net` (eval mode as
    it is): unique storages seen by ``saved_tensors_hooks``, parameters and buffers excluded."""
    own = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(net(x), y)
    del loss
    return sum(storages.values())


@dataclass(frozen=True)
class MemoryCheck:
    """One plan's memory: modelled, in the runtime's plan, and kept by eager autograd."""

    mode: str
    batch: int
    model_plan_bytes: int
    model_peak_bytes: int
    program_plan_bytes: int
    trainable_bytes: int
    optimizer_bytes: int
    eager_saved_bytes: int
    export_s: float
    #: the most bytes the program holds alive at one instruction (its tensors' lifetimes, before
    #: the planner packs them): the model's ``peak_bytes`` prices the same thing
    program_peak_bytes: int = 0
    model_backward_peak_bytes: int = 0
    program_backward_peak_bytes: int = 0

    @property
    def model_total_bytes(self) -> int:
        return self.model_plan_bytes + self.optimizer_bytes

    @property
    def program_total_bytes(self) -> int:
        """The reference: the program's plan (which holds the trainable weights, its planned
        inputs, and their gradients, its outputs) plus the optimizer state."""
        return self.program_plan_bytes + self.optimizer_bytes

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.model_total_bytes / self.program_total_bytes - 1.0)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(
            model_total_bytes=self.model_total_bytes,
            program_total_bytes=self.program_total_bytes,
            error_pct=round(self.error_pct, 3),
        )
        return row


def check_memory(
    net: nn.Module,
    plan: UpdatePlan,
    memory: TrainingMemory,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int = 0,
    check_kernels: bool = True,
) -> tuple[MemoryCheck, TrainingProgram]:
    """Export `plan` on a copy of `net` at the model's batch and compare the three figures.

    Trainable weights (the program's planned inputs) and their gradients (its outputs) are in
    the program's plan, so the reference adds only the optimizer state to it, as the model does.
    `check_kernels` off measures the plan of a program the runtime could not run
    (`export_training_program`).
    """
    if memory.optimizer != "sgd":
        raise ValueError("the runtime trains with SGD without momentum here; model it so")
    work = copy.deepcopy(net).eval()
    plan.apply(work)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((memory.batch, *input_shape), generator=gen)
    y = torch.randint(0, num_classes, (memory.batch,), generator=gen)
    program = export_training_program(work, (x, y), check_kernels=check_kernels)
    check = MemoryCheck(
        mode=plan.describe(),
        batch=memory.batch,
        model_plan_bytes=memory.plan_bytes,
        model_peak_bytes=memory.peak_bytes,
        program_plan_bytes=program.plan_bytes,
        trainable_bytes=memory.trainable_bytes,
        optimizer_bytes=memory.optimizer_bytes,
        eager_saved_bytes=eager_saved_bytes(work, x, y),
        export_s=program.export_s,
        program_peak_bytes=program.live_peak_bytes,
        model_backward_peak_bytes=memory.backward_peak_bytes,
        program_backward_peak_bytes=program.backward_peak_bytes,
    )
    return check, program

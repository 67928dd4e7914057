"""On-device learning: update plans (full, last blocks, biases, batch-norm affine, sparse under a
byte budget), the training-memory model and its checks against the runtime's memory plan, the
synthetic domain-shift task and adaptation in PyTorch and in the ExecuTorch runtime.
"""

from __future__ import annotations

from nas.ondevice.measure import MemoryCheck, check_memory, eager_saved_bytes
from nas.ondevice.memory import (
    OPTIMIZERS,
    LayerMemory,
    TrainingMemory,
    record_training_ops,
    training_memory,
)
from nas.ondevice.plans import MODES, UpdatePlan, block_of, blocks, make_plan, parameter_layers

__all__ = [
    "MODES",
    "OPTIMIZERS",
    "LayerMemory",
    "MemoryCheck",
    "TrainingMemory",
    "UpdatePlan",
    "block_of",
    "blocks",
    "check_memory",
    "eager_saved_bytes",
    "make_plan",
    "parameter_layers",
    "record_training_ops",
    "training_memory",
]

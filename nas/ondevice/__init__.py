"""On-device learning: update plans (full, last blocks, biases, batch-norm affine, sparse under a
byte budget), the training-memory model and its checks against the runtime's memory plan, the
synthetic domain-shift task and adaptation in PyTorch and in the ExecuTorch runtime.
"""

from __future__ import annotations

from nas.ondevice.adapt import (
    BATCH_NORM_MODES,
    AdaptResult,
    adabn,
    finetune,
    target_accuracy,
    train_source_model,
)
from nas.ondevice.measure import MemoryCheck, check_memory, eager_saved_bytes
from nas.ondevice.memory import (
    OPTIMIZERS,
    LayerMemory,
    OpTrace,
    TrainingMemory,
    record_training_ops,
    training_memory,
    training_memory_metric,
)
from nas.ondevice.plans import (
    MODES,
    OPTIONAL_MODES,
    UpdatePlan,
    block_of,
    blocks,
    make_plan,
    parameter_layers,
)
from nas.ondevice.residual import GROUP_WIDTH, LiteResidual, LiteResidualBlock, add_lite_residuals
from nas.ondevice.sparse import (
    BUDGET_MARGIN,
    BudgetTooSmallError,
    LayerProbe,
    plan_under_budget,
    probe_layers,
    step_down_in_program,
)
from nas.ondevice.task import SHIFTS, ShiftTask, apply_shift, make_shift_task

__all__ = [
    "BATCH_NORM_MODES",
    "BUDGET_MARGIN",
    "GROUP_WIDTH",
    "MODES",
    "OPTIMIZERS",
    "OPTIONAL_MODES",
    "SHIFTS",
    "AdaptResult",
    "BudgetTooSmallError",
    "LayerMemory",
    "LayerProbe",
    "LiteResidual",
    "LiteResidualBlock",
    "MemoryCheck",
    "OpTrace",
    "ShiftTask",
    "TrainingMemory",
    "UpdatePlan",
    "adabn",
    "add_lite_residuals",
    "apply_shift",
    "block_of",
    "blocks",
    "check_memory",
    "eager_saved_bytes",
    "finetune",
    "make_plan",
    "make_shift_task",
    "parameter_layers",
    "plan_under_budget",
    "probe_layers",
    "record_training_ops",
    "step_down_in_program",
    "target_accuracy",
    "train_source_model",
    "training_memory",
    "training_memory_metric",
]

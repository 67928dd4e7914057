"""Weight-sharing supernets: training schedules (sandwich with in-place distillation,
progressive shrinking, SPOS), the training loop with exact resume and DDP, batch-norm
recalibration, checkpoints, the accuracy of subnets with inherited weights, and intervals of
test accuracy (a bootstrap over source images).
"""

from __future__ import annotations

from nas.supernet.bn import bn_stats_preserved, recalibrate_bn
from nas.supernet.checkpoint import load_supernet
from nas.supernet.config import (
    SCHEDULES,
    Phase,
    ProgressiveOptions,
    SandwichOptions,
    SPOSOptions,
    SupernetConfig,
    make_config,
)
from nas.supernet.device import (
    PRECISIONS,
    DeviceError,
    OutOfMemory,
    Precision,
    available_devices,
    compile_model,
    execution,
    fits_memory,
    out_of_memory,
    resolve_device,
)
from nas.supernet.distributed import DistInfo, init_distributed
from nas.supernet.evaluate import (
    SubnetEvaluator,
    accuracy,
    correct_mask,
    evaluate_archs,
    state_fingerprint,
)
from nas.supernet.intervals import (
    AccuracyInterval,
    accuracy_interval,
    difference_interval,
    resolvable_difference,
    seed_sd,
)
from nas.supernet.loop import TrainResult, train_supernet
from nas.supernet.schedules import soft_cross_entropy

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "AccuracyInterval",
    "DeviceError",
    "DistInfo",
    "OutOfMemory",
    "Phase",
    "Precision",
    "ProgressiveOptions",
    "SPOSOptions",
    "SandwichOptions",
    "SubnetEvaluator",
    "SupernetConfig",
    "TrainResult",
    "accuracy",
    "accuracy_interval",
    "available_devices",
    "bn_stats_preserved",
    "compile_model",
    "correct_mask",
    "difference_interval",
    "evaluate_archs",
    "execution",
    "fits_memory",
    "init_distributed",
    "load_supernet",
    "make_config",
    "out_of_memory",
    "recalibrate_bn",
    "resolvable_difference",
    "resolve_device",
    "seed_sd",
    "soft_cross_entropy",
    "state_fingerprint",
    "train_supernet",
]

"""Weight-sharing supernets: training schedules (sandwich with in-place distillation,
progressive shrinking, SPOS), the training loop with exact resume and DDP, batch-norm
recalibration, checkpoints, and the accuracy of subnets with inherited weights.
"""

from __future__ import annotations

from nas.supernet.evaluate import (
    SubnetEvaluator,
    accuracy,
    evaluate_archs,
    state_fingerprint,
)
from nas.supernet.loop import (
    SCHEDULES,
    DistInfo,
    Phase,
    ProgressiveOptions,
    SandwichOptions,
    SPOSOptions,
    SupernetConfig,
    TrainResult,
    bn_stats_preserved,
    init_distributed,
    load_supernet,
    make_config,
    recalibrate_bn,
    soft_cross_entropy,
    train_supernet,
)

__all__ = [
    "SCHEDULES",
    "DistInfo",
    "Phase",
    "ProgressiveOptions",
    "SPOSOptions",
    "SandwichOptions",
    "SubnetEvaluator",
    "SupernetConfig",
    "TrainResult",
    "accuracy",
    "bn_stats_preserved",
    "evaluate_archs",
    "init_distributed",
    "load_supernet",
    "make_config",
    "recalibrate_bn",
    "soft_cross_entropy",
    "state_fingerprint",
    "train_supernet",
]

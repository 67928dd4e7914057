"""Hardware-aware training: differentiable architecture search with the device in the loss
(FBNet's Gumbel-softmax, ProxylessNAS's sampled paths), priced by the latency models the search
uses through `nas.core.ArchPricer` / `nas.core.LayerPricer`."""

from __future__ import annotations

from nas.hwtrain.derive import derive, top_archs
from nas.hwtrain.expected import ExpectedCost, arch_cost_fn, monte_carlo_check, price_fn
from nas.hwtrain.logits import SAMPLE, ArchLogits
from nas.hwtrain.losses import LOSS_FORMS, CostTerm, LossConfig, hardware_loss
from nas.hwtrain.relax import RELAXATIONS, DimRole, NotRelaxableError, Relaxation, probe_dims
from nas.hwtrain.train import WEIGHT_RULES, HWTrainConfig, HWTrainResult, train_hw

__all__ = [
    "LOSS_FORMS",
    "RELAXATIONS",
    "SAMPLE",
    "WEIGHT_RULES",
    "ArchLogits",
    "CostTerm",
    "DimRole",
    "ExpectedCost",
    "HWTrainConfig",
    "HWTrainResult",
    "LossConfig",
    "NotRelaxableError",
    "Relaxation",
    "arch_cost_fn",
    "derive",
    "hardware_loss",
    "monte_carlo_check",
    "price_fn",
    "probe_dims",
    "top_archs",
    "train_hw",
]

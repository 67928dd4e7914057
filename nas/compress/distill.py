"""Fine-tuning with knowledge distillation, and the training loop the other steps share.

The loss is Hinton, Vinyals and Dean's (NIPS 2014 workshop, "Distilling the Knowledge in a
Neural Network"): ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``,
with the ``T^2`` keeping the soft term's gradients at the scale of the hard one as ``T`` grows.
A student comes from any ``arch -> nn.Module`` callable (a supernet's ``export``, which gives the
subnet with inherited weights, or ``space.build`` for a fresh one); the teacher is any module,
the supernet's largest subnet by default (Once-for-All's choice, Cai et al., ICLR 2020).

Teacher logits are computed once per training run: the embedded data set's augmentation is
fixed (stored copies, not random crops), so the teacher would see the same images every epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nas.backends import predict_logits, set_weight_layout
from nas.supernet import Precision, fits_memory

__all__ = [
    "FinetuneConfig",
    "KDConfig",
    "StepCallback",
    "TrainHistory",
    "distill_model",
    "evaluate_accuracy",
    "extract_subnet",
    "kd_loss",
    "largest_arch",
    "train_model",
]

log = logging.getLogger(__name__)

StepCallback = Callable[[nn.Module, int, int], None]
"""Called after every optimiser step with (model, step index from 0, total steps)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """One training run: SGD with Nesterov momentum, linear warm-up, cosine decay to zero.

    ``epochs`` may be fractional (0.5 = half the batches of one pass); ``max_steps`` caps the
    optimiser steps (for smoke tests). ``channels_last`` trains in NHWC, about twice as fast for
    depthwise convolutions on CPUs; the model is returned in the default layout.
    """

    epochs: float = 1.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    batch_size: int = 128
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.0
    channels_last: bool = True
    max_steps: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (self.epochs >= 0 and math.isfinite(self.epochs)):
            problems.append(f"epochs must be a finite number >= 0, got {self.epochs!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.max_steps is not None and self.max_steps < 0:
            problems.append(f"max_steps must be None or >= 0, got {self.max_steps!r}")
        if problems:
            raise ValueError("invalid FinetuneConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KDConfig:
    """Mix and temperature of the distillation loss: ``alpha`` weighs the soft-target term
    (0 = labels only, 1 = teacher only); ``temperature`` softens both distributions."""

    alpha: float = 0.7
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"KDConfig.alpha must be in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise ValueError(f"KDConfig.temperature must be > 0, got {self.temperature!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainHistory:
    """Mean training loss per (possibly partial) epoch, and how many steps ran."""

    steps: int = 0
    epoch_loss: list[float] = field(default_factory=list)
    used_teacher: bool = False
    notes: list[str] = field(default_factory=list)
    #: QAT only: the trained model scored below its calibrated start on val, which was kept
    kept_start: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    kd: KDConfig,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``; CE alone without teacher."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or kd.alpha == 0.0:
        return hard
    t = kd.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),  # N x classes
        F.log_softmax(teacher_logits / t, dim=1),  # N x classes
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    return kd.alpha * soft + (1.0 - kd.alpha) * hard


def evaluate_accuracy(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    dataset: TensorDataset,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``dataset`` = (images, labels)."""
    images, labels = dataset.tensors[0], dataset.tensors[1]
    if len(labels) == 0:
        raise ValueError("evaluate_accuracy needs a non-empty dataset")
    logits = predict_logits(model, images, batch_size)
    return float((logits.argmax(1) == labels).float().mean())


def _lr_at(step: int, total: int, cfg: FinetuneConfig) -> float:
    warm = int(cfg.warmup_fraction * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))


def train_model(
    model: nn.Module,
    data: TensorDataset,
    config: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    kd: KDConfig | None = None,
    seed: int = 0,
    on_step: StepCallback | None = None,
    teacher_logits: torch.Tensor | None = None,
    precision: Precision | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``data`` (images, labels), with KD when a teacher is given.

    Batches are drawn from a permutation seeded with ``seed``; the optimiser covers every
    parameter that requires a gradient. Ends in eval mode. ``teacher_logits`` (N x classes, the
    teacher's logits for ``data``'s images, in order) spare computing them again when one
    teacher serves several runs (pruning's rounds). ``precision`` (`nas.supernet.execution`)
    says the device the model trains on and the autocast of its forward passes (default: fp32
    where the model is); the model goes back to where it was when the call ends, so the steps
    after training (export, quantization, timing) run where they did.
    """
    images, labels = data.tensors[0], data.tensors[1]
    n = len(labels)
    if n == 0:
        raise ValueError("train_model needs a non-empty training set")
    kd = kd or KDConfig()
    bs = min(config.batch_size, n)
    per_epoch = n // bs  # full batches only: BN statistics of a 3-image batch are noise
    total = math.ceil(config.epochs * per_epoch)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    history = TrainHistory(used_teacher=teacher is not None and kd.alpha > 0)
    if total == 0:
        return history
    home = _device_of(model)
    prec = precision or Precision("fp32", home)
    teacher_logits = _teacher_outputs(history, teacher, teacher_logits, images, prec)
    model.to(prec.device)
    opt = _optimizer(model, config)
    gen = torch.Generator().manual_seed(seed)
    if config.channels_last:
        set_weight_layout(model, True)
    model.train()
    step = 0
    remedy = f"Lower this training run's batch_size ({bs}), or use precision bf16"
    try:
        while step < total:
            order = torch.randperm(n, generator=gen)
            losses = []
            for b in range(per_epoch):
                if step >= total:
                    break
                idx = order[b * bs : (b + 1) * bs]
                t_out = prec.to(teacher_logits[idx]) if teacher_logits is not None else None
                lr = _lr_at(step, total, config)
                x, y = prec.to(images[idx]), prec.to(labels[idx])
                with fits_memory(prec.device, bs, remedy=remedy):
                    losses.append(_train_step(model, opt, x, y, t_out, kd, config, lr, prec))
                step += 1
                if on_step is not None:
                    on_step(model, step - 1, total)
            history.epoch_loss.append(sum(losses) / max(len(losses), 1))
            log.info(
                "epoch %d: loss %.4f (%d/%d steps)",
                len(history.epoch_loss),
                history.epoch_loss[-1],
                step,
                total,
            )
    finally:
        if config.channels_last:
            set_weight_layout(model, False)
        model.to(home)
        model.eval()
    history.steps = step
    return history


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _teacher_outputs(
    history: TrainHistory,
    teacher: nn.Module | None,
    given: torch.Tensor | None,
    images: torch.Tensor,
    prec: Precision,
) -> torch.Tensor | None:
    """The teacher's logits for `images` (N x classes): None without KD, else those `given`
    (checked to have a row per image) or computed now."""
    if not history.used_teacher:
        return None
    if given is None:
        assert teacher is not None
        return _teacher_logits(teacher, images, prec)
    if given.shape[0] != len(images):
        raise ValueError(
            f"teacher_logits has {given.shape[0]} rows for {len(images)} training images"
        )
    return given


def _teacher_logits(teacher: nn.Module, images: torch.Tensor, prec: Precision) -> torch.Tensor:
    """The teacher's logits (N x classes, fp32, on the CPU beside the images), computed on
    `prec`'s device under its autocast; on the CPU in fp32, as `predict_logits` computes them."""
    if prec.device.type == "cpu" and prec.dtype is None:
        return predict_logits(teacher, images)
    home = _device_of(teacher)
    teacher.to(prec.device).eval()
    try:
        with torch.no_grad(), prec.autocast():
            return torch.cat([teacher(prec.to(x)).float().cpu() for x in images.split(256)])
    finally:
        teacher.to(home)


def _optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.SGD:
    """SGD (Nesterov with momentum) over the trainable parameters; no weight decay on batch
    norm and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]  # BN and biases: no weight decay
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
    )


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    t_out: torch.Tensor | None,
    kd: KDConfig,
    config: FinetuneConfig,
    lr: float,
    prec: Precision,
) -> float:
    """One optimiser step on the batch ``x`` (B x C x H x W), labels ``y``, teacher logits
    ``t_out``, at learning rate ``lr``, under ``prec``'s autocast; returns the batch's loss."""
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with prec.autocast():
        out = model(x)  # B x classes
        loss = kd_loss(out.float(), t_out, y, kd, config.label_smoothing)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    prec.backward(loss)
    prec.step(opt)
    return float(loss.detach())


def distill_model(
    student: nn.Module,
    teacher: nn.Module | None,
    data: TensorDataset,
    config: FinetuneConfig,
    kd: KDConfig | None = None,
    *,
    seed: int = 0,
    teacher_logits: torch.Tensor | None = None,
    precision: Precision | None = None,
) -> TrainHistory:
    """Fine-tune ``student`` in place with KD from ``teacher`` (labels only when None);
    ``teacher_logits`` and ``precision``: see :func:`train_model`."""
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    return train_model(
        student,
        data,
        config,
        teacher=teacher,
        kd=kd,
        seed=seed,
        teacher_logits=teacher_logits,
        precision=precision,
    )


def largest_arch(space: Any) -> dict[str, Any]:
    """The largest arch of a space: every numeric dimension at its largest value, every other
    dimension at its first value (for OFA-style spaces, the full network: the default teacher)."""
    arch: dict[str, Any] = {}
    for key, choice in space.dimensions().items():
        arch[key] = max(choice.values) if choice.is_ordinal else choice.values[0]
    return dict(space.validate(arch))


def extract_subnet(
    export: Callable[[Mapping[str, Any]], nn.Module], arch: Mapping[str, Any]
) -> nn.Module:
    """A standalone subnet from an ``arch -> nn.Module`` callable (a supernet's ``export``, which
    gives ``space.build(arch)`` with inherited weights, or ``space.build`` for a fresh one)."""
    module = export(arch)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"the subnet exporter must return an nn.Module for arch {dict(arch)!r}; got "
            f"{type(module).__name__}"
        )
    return module.eval()

"""Adaptation of a deployed model to a target domain: fine-tuning an update plan on the shots in
PyTorch or in the ExecuTorch runtime, and the baselines beside it (no adaptation; AdaBN, batch-
norm statistics re-estimated on the shots alone, Li et al., 2016). The PyTorch loops run on a
device of choice (default the CPU) in fp32 always: they stand in for an edge device's training,
whose arithmetic is fp32; the ExecuTorch runtime runs on the CPU."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from nas.backends import RuntimeTrainer, check_runtime_optimizer, export_training_program
from nas.ondevice.plans import UpdatePlan
from nas.supernet import Precision, accuracy, execution, fits_memory, recalibrate_bn

__all__ = [
    "BATCH_NORM_MODES",
    "AdaptResult",
    "adabn",
    "finetune",
    "target_accuracy",
    "train_source_model",
]

#: how batch norm runs while adapting: "eval" (frozen statistics, the default; what the memory
#: model prices) or "train" (the batch's statistics, as in training; the running statistics
#: re-estimated on the shots afterwards, since the runtime does not hand its own back)
BATCH_NORM_MODES = ("eval", "train")


@dataclass
class AdaptResult:
    """An adapted copy of the model, its losses per step, and where it trained."""

    model: nn.Module
    losses: list[float]
    engine: str  # "pytorch" or "executorch"
    step_ms: float
    reference_losses: list[float] = field(default_factory=list)  # PyTorch's, when checked
    program_plan_bytes: int = 0  # the runtime program's planned buffer (executorch only)


#: the momentum of optimizer "sgd_momentum", in PyTorch and in the runtime
MOMENTUM = 0.9


def _optimizer(params: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """The PyTorch optimizer of a memory-model name (`nas.ondevice.OPTIMIZERS`)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be 'sgd', 'sgd_momentum' or 'adam', got {name!r}")


def _batches(
    n: int, batch: int, steps: int, seed: int
) -> list[torch.Tensor]:  # each: indices of one batch
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def _torch_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    order: list[torch.Tensor],
    lr: float,
    optimizer: str = "sgd",
    prec: Precision | None = None,
) -> list[float]:
    prec = prec or Precision()
    model.to(prec.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, optimizer, lr)
    losses = []
    for idx in order:
        opt.zero_grad()
        with fits_memory(prec.device, len(idx)):
            loss = nn.functional.cross_entropy(model(prec.to(x[idx])), prec.to(y[idx]))
        prec.backward(loss)
        prec.step(opt)
        losses.append(loss.item())
    return losses


def finetune(
    model: nn.Module,
    plan: UpdatePlan,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 60,
    batch: int = 8,
    lr: float = 0.05,
    seed: int = 0,
    engine: str = "pytorch",
    check: bool = False,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    batch_norm: str = "eval",
) -> AdaptResult:
    """Fine-tune a copy of `model` under `plan` on (x, y) with `optimizer` (default SGD without
    momentum), the same batches for either engine. Batch norm is frozen (eval mode), or with
    ``batch_norm="train"`` normalizes with each batch's statistics (in the runtime too:
    `export_training_program`'s training mode) and has its running statistics re-estimated on
    the shots after the last step (`recalibrate_bn`), the same for either engine.
    ``engine="executorch"`` runs the steps in the runtime's training program (a
    `TrainingProgramError` where the runtime cannot: an optimizer it lacks, an op); `check` runs
    PyTorch beside it and keeps its losses in ``reference_losses``. PyTorch trains on `device`
    (fp32; a `DeviceError` names the devices there are) and hands the model back on the CPU."""
    if engine not in ("pytorch", "executorch"):
        raise ValueError(f"engine must be 'pytorch' or 'executorch', got {engine!r}")
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    if engine == "executorch":
        check_runtime_optimizer(optimizer)  # before any work
    prec = execution(device, "fp32")  # an edge device trains in fp32
    batch = min(batch, len(y))
    order = _batches(len(y), batch, steps, seed)
    work = copy.deepcopy(model).eval()
    plan.apply(work)
    if engine == "pytorch":
        start = time.perf_counter()
        losses = _torch_steps(_bn_mode(work, batch_norm), x, y, order, lr, optimizer, prec)
        step_ms = 1e3 * (time.perf_counter() - start) / max(steps, 1)
        result = AdaptResult(work.to("cpu").eval(), losses, engine, step_ms)
        return _restat(result, x, batch_norm)
    reference = (
        _torch_steps(_bn_mode(copy.deepcopy(work), batch_norm), x, y, order, lr, optimizer, prec)
        if check
        else []
    )
    program = export_training_program(work, (x[order[0]], y[order[0]]), batch_norm=batch_norm)
    momentum = MOMENTUM if optimizer == "sgd_momentum" else 0.0
    trainer = RuntimeTrainer(program, lr=lr, momentum=momentum)
    start = time.perf_counter()
    losses = [trainer.step(x[idx], y[idx]) for idx in order]
    step_ms = 1e3 * (time.perf_counter() - start) / max(steps, 1)
    trainer.load_into(work)
    result = AdaptResult(work, losses, engine, step_ms, reference, program.plan_bytes)
    return _restat(result, x, batch_norm)


def _bn_mode(model: nn.Module, batch_norm: str) -> nn.Module:
    """`model` (in eval mode) with its batch norms in training mode when `batch_norm` says so."""
    if batch_norm == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    return model


def _restat(result: AdaptResult, x: torch.Tensor, batch_norm: str, batch: int = 50) -> AdaptResult:
    """After training-mode batch norm, the running statistics re-estimated on the shots `x`:
    the weights trained on batch statistics, so the deployed (eval) model normalizes with the
    shots' own, whichever engine ran (the runtime keeps its running statistics to itself)."""
    if batch_norm == "train":
        recalibrate_bn(result.model, [x[i : i + batch] for i in range(0, len(x), batch)])
    return result


def adabn(model: nn.Module, x: torch.Tensor, batch: int = 50) -> nn.Module:
    """A copy of `model` whose batch-norm statistics are re-estimated on `x` alone."""
    work = copy.deepcopy(model).eval()
    recalibrate_bn(work, [x[i : i + batch] for i in range(0, len(x), batch)])
    return work


def train_source_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 3,
    batch: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train `model` on the source domain (SGD with momentum, batch norm in training mode): the
    stand-in for a deployed model when no run's winner is at hand. It trains on `device` in
    fp32 and comes back on the CPU."""
    prec = execution(device, "fp32")
    model.to(prec.device)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-5)
    model.train()
    steps = epochs * (len(y) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for idx in _batches(len(y), batch, steps, seed):
        opt.zero_grad()
        with fits_memory(prec.device, batch):
            loss = nn.functional.cross_entropy(model(prec.to(x[idx])), prec.to(y[idx]))
        prec.backward(loss)
        prec.step(opt)
        sched.step()
    return model.to("cpu").eval()


def target_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy on the target test set, in [0, 1]."""
    return accuracy(model, x, y)

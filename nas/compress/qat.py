"""Quantization-aware training (Jacob et al., CVPR 2018) through PT2E fake-quantize ops.

The schedule that paper and PyTorch's QAT recipe use: batch norm folded into the preceding conv
as a simulated fold during training (``prepare_qat_pt2e`` rewrites conv-bn), observers frozen
after a share of the steps (scales and zero points then stay fixed), batch norm statistics
frozen a little later, and a small learning rate with warm-up and cosine decay. KD from the fp32
model (the one being quantized) keeps the int8 model close to it. Preparation, calibration and
checkpoints are PTQ's (:mod:`nas.compress.ptq`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nas.backends import cached_pt2e_patterns, check_weight_bits, torchao_pt2e
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    TrainHistory,
    evaluate_accuracy,
    train_model,
)
from nas.compress.ptq import calibrate_observers, calibration_batches, prepare
from nas.supernet import Precision

__all__ = [
    "QATConfig",
    "fp32_twin",
    "freeze_batchnorm_stats",
    "train_qat",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QATConfig:
    """The QAT phase: training run, KD from the fp32 model, and when to freeze what.

    ``freeze_observers_at`` and ``freeze_bn_at`` are shares of the training steps after which
    observers (scale and zero point) and batch-norm statistics stop updating.

    The defaults suit QAT of an already trained fp32 model (the chain's case): a learning rate
    a tenth of fine-tuning's without warm-up, and batch-norm statistics frozen from the start,
    since the fp32 model's statistics are right and a few dozen batches of fake-quantized
    statistics only add noise. Measured on the demo's pruned winner (1 epoch, 67 steps): lr 5e-4
    with frozen batch norm kept the int8 model at its fp32 accuracy (77.96 % -> 78.00 %), while
    lr 0.05 with batch-norm statistics updating for 70 % of the steps lost 13-20 points.
    """

    train: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(epochs=2.0, lr=5e-4, warmup_fraction=0.0)
    )
    kd: KDConfig = field(default_factory=KDConfig)
    freeze_observers_at: float = 0.5
    freeze_bn_at: float = 0.0
    per_channel: bool = True
    weight_bits: int = 8
    calibration_images: int = 512

    def __post_init__(self) -> None:
        check_weight_bits(self.weight_bits)
        for name in ("freeze_observers_at", "freeze_bn_at"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"QATConfig.{name} must be in [0, 1], got {value!r}")
        if self.calibration_images < 1:
            raise ValueError(
                f"QATConfig.calibration_images must be >= 1, got {self.calibration_images!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def freeze_batchnorm_stats(prepared: torch.fx.GraphModule) -> int:
    """Stop batch-norm statistics from updating in a prepared (exported) model while it keeps
    training: PyTorch's PT2E QAT recipe, which sets the ``training`` argument of each
    ``batch_norm`` node to False. Returns the number of nodes changed."""
    changed = 0
    targets = {torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit.default}
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in targets and node.args[5] is True:
            args = list(node.args)
            args[5] = False
            node.args = tuple(args)
            changed += 1
    if changed:
        prepared.recompile()
    return changed


def train_qat(
    model: nn.Module,
    train: TensorDataset,
    config: QATConfig,
    input_shape: Sequence[int],
    *,
    teacher: nn.Module | None = None,
    val: TensorDataset | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[torch.fx.GraphModule, TrainHistory]:
    """Quantization-aware training of ``model`` (not changed) on ``train``.

    Observers are first calibrated on ``config.calibration_images`` images so training starts
    from sensible ranges (the calibrated model is post-training int8), then the fake-quantized
    model trains with KD from ``teacher`` (pass the fp32 model itself; None trains on labels
    only) while observers and batch-norm statistics freeze on schedule. With ``val``, the trained
    model must beat its calibrated start on ``val``; when it does not, the calibrated start is
    kept and ``history.notes`` says so. Returns the prepared model (save it, or
    :func:`convert` it). The training steps run on ``device`` (a resolved one:
    `nas.supernet.execution(...).device`; default: where the model is) and always in fp32, out of any autocast: fake
    quantization simulates int8 arithmetic on fp32 values, and a bf16 forward pass would round
    them again, so the scales it learns would not be the int8 model's. Calibration and the
    val check run where the model is (the CPU, like the int8 model it becomes).
    """
    pt2e = torchao_pt2e()
    prepared = prepare(
        model,
        input_shape,
        kind="qat",
        per_channel=config.per_channel,
        weight_bits=config.weight_bits,
    )
    calibrate_observers(
        prepared, calibration_batches(train.tensors[0], config.calibration_images, 64, seed)
    )
    start: tuple[float, dict[str, torch.Tensor]] | None = None
    if val is not None:
        with cached_pt2e_patterns():
            start = (
                evaluate_accuracy(prepared, val),
                {k: v.detach().clone() for k, v in prepared.state_dict().items()},
            )
    schedule = _FreezeSchedule(config, pt2e)
    if teacher is not None:
        teacher.eval()
    with cached_pt2e_patterns():
        history = train_model(
            prepared,
            train,
            config.train,
            teacher=teacher,
            kd=config.kd,
            seed=seed,
            on_step=schedule,
            precision=None if device is None else Precision("fp32", torch.device(device)),
        )
        if not schedule.observers_frozen:
            prepared.apply(pt2e.disable_observer)
        prepared.eval()
        if start is not None and val is not None:
            _keep_the_better(prepared, start, val, history, pt2e)
    return prepared, history


class _FreezeSchedule:
    """The step callback of QAT: freezes observers, then batch-norm statistics, once their
    shares of the training steps (``freeze_observers_at``, ``freeze_bn_at``) are done."""

    def __init__(self, config: QATConfig, pt2e: Any) -> None:
        self.config, self.pt2e = config, pt2e
        self.observers_frozen = self.bn_frozen = False

    def __call__(self, m: nn.Module, step: int, total: int) -> None:
        done = (step + 1) / total
        if not self.observers_frozen and done >= self.config.freeze_observers_at:
            m.apply(self.pt2e.disable_observer)
            self.observers_frozen = True
            log.info("QAT: observers frozen after step %d/%d", step + 1, total)
        if not self.bn_frozen and done >= self.config.freeze_bn_at:
            n = freeze_batchnorm_stats(m)  # type: ignore[arg-type]
            self.bn_frozen = True
            log.info(
                "QAT: batch-norm statistics frozen (%d nodes) after step %d/%d", n, step + 1, total
            )


def _keep_the_better(
    prepared: nn.Module,
    start: tuple[float, dict[str, torch.Tensor]],
    val: TensorDataset,
    history: TrainHistory,
    pt2e: Any,
) -> None:
    """Put the calibrated start (its val accuracy and state) back into ``prepared`` when QAT
    scored below it on ``val``; ``history`` notes either way."""
    trained_acc = evaluate_accuracy(prepared, val)
    if trained_acc < start[0]:
        prepared.load_state_dict(start[1], strict=True)
        prepared.apply(pt2e.disable_observer)
        prepared.eval()
        history.kept_start = True
        history.notes.append(
            f"QAT ({100 * trained_acc:.2f} % val) did not beat its calibrated start "
            f"({100 * start[0]:.2f} % val): kept the calibrated (post-training) int8"
        )
    else:
        history.notes.append(
            f"val {100 * start[0]:.2f} % calibrated -> {100 * trained_acc:.2f} % after QAT"
        )


def fp32_twin(model: nn.Module, prepared: nn.Module) -> nn.Module:
    """``model`` with the fp32 weights and batch-norm statistics of a prepared (QAT-trained)
    model copied in: the same network without fake-quantize ops, for devices that quantize a
    module themselves (latency does not depend on the weights' values)."""
    twin = copy.deepcopy(model)
    state = prepared.state_dict()
    own = twin.state_dict()
    twin.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)
    return twin.eval()

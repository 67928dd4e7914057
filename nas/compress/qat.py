"""int8 through PyTorch's PT2E flow: post-training quantization and quantization-aware training.

Both use torchao's PT2E entry points (``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e``)
with ExecuTorch's ``XNNPACKQuantizer``: weights int8 symmetric per output channel, activations
int8 per tensor (asymmetric), the scheme XNNPACK runs natively. PTQ calibrates observers on a
few hundred training images; QAT (Jacob et al., CVPR 2018) fine-tunes through fake-quantize
ops, with the schedule that paper and PyTorch's QAT recipe use: batch norm folded into the
preceding conv as a simulated fold during training (``prepare_qat_pt2e`` rewrites conv-bn),
observers frozen after a share of the steps (scales and zero points then stay fixed), batch
norm statistics frozen a little later, and a small learning rate with warm-up and cosine decay.
KD from the fp32 model (the one being quantized) keeps the int8 model close to it.

Checkpoints of a prepared model hold, in safetensors, the fp32 model it came from and the
prepared model's state (weights, batch-norm statistics, observer ranges, scales and zero
points). Loading rebuilds the fp32 model from its structure, prepares it again (the graph is
deterministic) and loads the state strictly, so nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nas.compress.checkpoint import (
    CheckpointError,
    apply_structure,
    load_state_strict,
    module_structure,
    read_checkpoint,
    save_state,
)
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    TrainHistory,
    evaluate_accuracy,
    train_model,
)

__all__ = [
    "QATConfig",
    "calibrate_observers",
    "convert",
    "fp32_twin",
    "freeze_batchnorm_stats",
    "load_quantized",
    "prepare",
    "ptq",
    "save_quantized",
    "train_qat",
    "xnnpack_quantizer",
]

log = logging.getLogger(__name__)

QUANT_KINDS = ("ptq", "qat")
_FP32, _QUANT = "fp32/", "quant/"  # key prefixes of the two states in a quantized checkpoint
_MAX_BATCH = 1 << 16  # upper bound of the dynamic batch dimension of a prepared model


def _pt2e() -> Any:
    try:
        from torchao.quantization import pt2e
    except ImportError as err:
        raise ImportError(
            "int8 quantization needs torchao and executorch (the XNNPACK quantizer): "
            "pip install 'edge-nas[executorch]'"
        ) from err
    return pt2e


# torchao builds the aten graphs of its rewrite patterns (conv-bn folding, batch-norm train/eval
# switching) with a strict torch.export each time they are needed: ~100 exports, 20-50 s, per
# convert_pt2e call on a 2-core CPU, the same graphs every time. They are cached here, keyed by
# the pattern function's code, its closure values and the example inputs' shapes, and handed
# out as copies, so later calls in a process cost milliseconds. Only inside our own calls.
_PATTERN_CACHE: dict[Hashable, Any] = {}
_PATTERN_MODULES = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
)


def _pattern_key(
    pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]
) -> Hashable | None:
    fn = getattr(pattern, "fn", pattern)  # torchao wraps some patterns in a WrapperModule
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        value = cell.cell_contents
        if not isinstance(value, (bool, int, float, str, type(None))) and not callable(value):
            return None
        cells.append(getattr(value, "__qualname__", None) or repr(value))
    inputs: list[Hashable] = []
    for x in (*example_inputs, *sorted(kwargs.items())):
        value = x[1] if isinstance(x, tuple) else x
        tag = x[0] if isinstance(x, tuple) else ""
        if isinstance(value, torch.Tensor):
            inputs.append((tag, tuple(value.shape), str(value.dtype)))
        elif isinstance(value, (bool, int, float, str, type(None))):
            inputs.append((tag, type(value).__name__, repr(value)))
        else:
            return None
    return (code, tuple(cells), tuple(inputs), is_cuda)


@contextlib.contextmanager
def _cached_patterns() -> Iterator[None]:
    from torchao.quantization.pt2e import utils as pt2e_utils

    original = pt2e_utils._get_aten_graph_module_for_pattern
    if getattr(original, "_edge_nas_cached", False):  # already inside
        yield
        return

    def cached(
        pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any
    ) -> Any:
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return original(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _PATTERN_CACHE:
            _PATTERN_CACHE[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytree's deprecation chatter on copying a graph
            return copy.deepcopy(_PATTERN_CACHE[key])

    cached._edge_nas_cached = True  # type: ignore[attr-defined]
    patched: list[tuple[Any, str, Any]] = []
    for name in _PATTERN_MODULES:
        module = sys.modules.get(name)
        if (
            module is not None
            and getattr(module, "_get_aten_graph_module_for_pattern", None) is original
        ):
            patched.append((module, "_get_aten_graph_module_for_pattern", original))
            module._get_aten_graph_module_for_pattern = cached  # type: ignore[attr-defined]
    # The conv-bn fuse / fold passes try conv1d, conv2d, conv_transpose1d and conv_transpose2d
    # patterns in turn; patterns of a conv kind the graph does not contain cannot match, so
    # those helpers are skipped (three quarters of the pattern builds for a 2-D CNN).
    from torchao.quantization.pt2e import qat_utils

    for helper_name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper"):
        helper = getattr(qat_utils, helper_name, None)
        if helper is not None:
            patched.append((qat_utils, helper_name, helper))
            setattr(qat_utils, helper_name, _only_present_convs(helper))
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


_CONV_OPS = {
    "conv1d": "aten.conv1d.",
    "conv2d": "aten.conv2d.",
    "conv_transpose1d": "aten.conv_transpose1d.",
    "conv_transpose2d": "aten.conv_transpose2d.",
}


def _only_present_convs(helper: Callable[..., Any]) -> Callable[..., Any]:
    def run(m: Any, conv_fn: Callable[..., Any], example_inputs: Any, is_cuda: bool) -> Any:
        prefix = _CONV_OPS.get(getattr(conv_fn, "__name__", ""))
        targets = {str(n.target) for n in m.graph.nodes if n.op == "call_function"}
        generic = any(t.startswith("aten.convolution.") for t in targets)
        if prefix is not None and not generic and not any(t.startswith(prefix) for t in targets):
            return m
        return helper(m, conv_fn, example_inputs, is_cuda)

    return run


WEIGHT_BITS = (7, 8)
"""Weight ranges: 8 is int8's symmetric [-127, 127]; 7 keeps weights in [-63, 63], still
stored as int8. x86 CPUs without VNNI multiply int8 pairs into 16-bit sums that saturate
with full-range weights (ONNX Runtime's int8 kernels there lost 6 % top-1 agreement with
PyTorch on a small QAT model); 7-bit weights cannot saturate. Phones' int8 paths do not
saturate: keep 8 unless an artifact runs on such an x86 CPU (``export.has_vnni``)."""


def check_weight_bits(weight_bits: int) -> int:
    if weight_bits not in WEIGHT_BITS:
        raise ValueError(
            f"weight_bits must be one of {WEIGHT_BITS} (7 against saturation on x86 CPUs "
            f"without VNNI); got {weight_bits!r}"
        )
    return weight_bits


def xnnpack_quantizer(*, is_qat: bool, per_channel: bool = True, weight_bits: int = 8) -> Any:
    """ExecuTorch's XNNPACK quantizer: symmetric int8 weights (per channel by default, in the
    range of ``weight_bits``: :data:`WEIGHT_BITS`), int8 per-tensor activations; ``is_qat``
    gives fake-quantize modules instead of observers."""
    qmax = 2 ** (check_weight_bits(weight_bits) - 1) - 1
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as err:
        raise ImportError(
            "the XNNPACK quantizer comes with executorch: pip install 'edge-nas[executorch]'"
        ) from err
    config = get_symmetric_quantization_config(
        is_per_channel=per_channel, is_qat=is_qat, weight_qmin=-qmax, weight_qmax=qmax
    )
    return XNNPACKQuantizer().set_global(config)


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


def prepare(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    kind: str,
    per_channel: bool = True,
    weight_bits: int = 8,
) -> torch.fx.GraphModule:
    """``torch.export`` the fp32 ``model`` (batch dimension dynamic) and insert observers
    (``kind="ptq"``) or fake-quantize ops with conv-bn fold simulation (``kind="qat"``).

    The returned graph module accepts ``.train()`` and ``.eval()``. It owns copies of
    ``model``'s tensors: ``torch.export`` hands the module's own parameters and buffers to the
    exported graph, so training (QAT) or calibrating the prepared model would otherwise change
    ``model`` in place.
    """
    if kind not in QUANT_KINDS:
        raise ValueError(f"kind must be one of {QUANT_KINDS}, got {kind!r}")
    pt2e = _pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    shape = tuple(int(s) for s in input_shape)
    example = torch.zeros((2, *shape))  # 2 x C x H x W: batch 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    model = copy.deepcopy(model)  # the prepared graph must not share tensors with `model`
    model.train(kind == "qat")
    with warnings.catch_warnings(), _cached_patterns():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        quantizer = xnnpack_quantizer(
            is_qat=kind == "qat", per_channel=per_channel, weight_bits=weight_bits
        )
        if kind == "qat":
            prepared = prepare_qat_pt2e(ep.module(), quantizer)
        else:
            prepared = prepare_pt2e(ep.module(), quantizer)
        pt2e.allow_exported_model_train_eval(prepared)
        if kind == "ptq":
            prepared.eval()
    return prepared


@torch.no_grad()
def calibrate_observers(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``batches`` through a prepared model so its observers record ranges; returns the
    number of images seen."""
    with _cached_patterns():
        prepared.eval()
    seen = 0
    for x in batches:
        prepared(x)
        seen += len(x)
    if seen == 0:
        raise ValueError("calibration needs at least one batch of images; got none")
    return seen


def convert(prepared: nn.Module) -> torch.fx.GraphModule:
    """The int8 model (quantize / dequantize ops around fp32 ops, weights stored int8) of a
    calibrated or QAT-trained prepared model, in eval mode, ready to export or lower."""
    pt2e = _pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with warnings.catch_warnings(), _cached_patterns():
        warnings.simplefilter("ignore")
        prepared.eval()
        converted = convert_pt2e(prepared)
        pt2e.allow_exported_model_train_eval(converted)
        converted.eval()
    return converted


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


def _batches(images: torch.Tensor, n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[: min(n, len(images))]
    picked = images[idx]
    return list(picked.split(batch_size))


def ptq(
    model: nn.Module,
    calibration_images: torch.Tensor,
    input_shape: Sequence[int],
    *,
    n_images: int = 512,
    per_channel: bool = True,
    weight_bits: int = 8,
    seed: int = 0,
) -> torch.fx.GraphModule:
    """Post-training int8: prepare with observers and calibrate on ``n_images`` images drawn
    (seeded) from ``calibration_images``. Returns the calibrated prepared model: save it, or
    :func:`convert` it."""
    prepared = prepare(
        model, input_shape, kind="ptq", per_channel=per_channel, weight_bits=weight_bits
    )
    calibrate_observers(prepared, _batches(calibration_images, n_images, 64, seed))
    return prepared


def train_qat(
    model: nn.Module,
    train: TensorDataset,
    config: QATConfig,
    input_shape: Sequence[int],
    *,
    teacher: nn.Module | None = None,
    val: TensorDataset | None = None,
    seed: int = 0,
) -> tuple[torch.fx.GraphModule, TrainHistory]:
    """Quantization-aware training of ``model`` (not changed) on ``train``.

    Observers are first calibrated on ``config.calibration_images`` images so training starts
    from sensible ranges (the calibrated model is post-training int8), then the fake-quantized
    model trains with KD from ``teacher`` (pass the fp32 model itself; None trains on labels
    only) while observers and batch-norm statistics freeze on schedule. With ``val``, the trained
    model must beat its calibrated start on ``val``; when it does not, the calibrated start is
    kept and ``history.notes`` says so. Returns the prepared model (save it, or
    :func:`convert` it).
    """
    pt2e = _pt2e()
    prepared = prepare(
        model,
        input_shape,
        kind="qat",
        per_channel=config.per_channel,
        weight_bits=config.weight_bits,
    )
    calibrate_observers(prepared, _batches(train.tensors[0], config.calibration_images, 64, seed))
    start: tuple[float, dict[str, torch.Tensor]] | None = None
    if val is not None:
        with _cached_patterns():
            start = (
                evaluate_accuracy(prepared, val),
                {k: v.detach().clone() for k, v in prepared.state_dict().items()},
            )
    frozen = {"observers": False, "bn": False}

    def on_step(m: nn.Module, step: int, total: int) -> None:
        done = (step + 1) / total
        if not frozen["observers"] and done >= config.freeze_observers_at:
            m.apply(pt2e.disable_observer)
            frozen["observers"] = True
            log.info("QAT: observers frozen after step %d/%d", step + 1, total)
        if not frozen["bn"] and done >= config.freeze_bn_at:
            n = freeze_batchnorm_stats(m)  # type: ignore[arg-type]
            frozen["bn"] = True
            log.info(
                "QAT: batch-norm statistics frozen (%d nodes) after step %d/%d", n, step + 1, total
            )

    if teacher is not None:
        teacher.eval()
    with _cached_patterns():
        history = train_model(
            prepared,
            train,
            config.train,
            teacher=teacher,
            kd=config.kd,
            seed=seed,
            on_step=on_step,
        )
        if not frozen["observers"]:
            prepared.apply(pt2e.disable_observer)
        prepared.eval()
        if start is not None and val is not None:
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
    return prepared, history


def fp32_twin(model: nn.Module, prepared: nn.Module) -> nn.Module:
    """``model`` with the fp32 weights and batch-norm statistics of a prepared (QAT-trained)
    model copied in: the same network without fake-quantize ops, for devices that quantize a
    module themselves (latency does not depend on the weights' values)."""
    import copy

    twin = copy.deepcopy(model)
    state = prepared.state_dict()
    own = twin.state_dict()
    twin.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)
    return twin.eval()


def save_quantized(
    path: str | Path,
    prepared: nn.Module,
    fp32_model: nn.Module,
    input_shape: Sequence[int],
    *,
    kind: str,
    per_channel: bool = True,
    weight_bits: int = 8,
    info: dict[str, Any] | None = None,
) -> Path:
    """Save a prepared model's state with the fp32 model it came from (state and structure)."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"kind must be one of {QUANT_KINDS}, got {kind!r}")
    meta = dict(info or {})
    meta.update(
        {
            "input_shape": [int(s) for s in input_shape],
            "per_channel": per_channel,
            "weight_bits": check_weight_bits(weight_bits),
        }
    )
    # Both states: the fp32 model is prepared again on loading (PTQ's preparation folds batch
    # norm into the convs, so the prepared state alone cannot rebuild it), then the prepared
    # state (trained weights, ranges, scales) goes on top.
    tensors = {f"{_FP32}{k}": v for k, v in fp32_model.state_dict().items()}
    tensors.update({f"{_QUANT}{k}": v for k, v in prepared.state_dict().items()})
    return save_state(
        path,
        tensors,
        kind=kind,
        structure=module_structure(fp32_model),
        info=meta,
    )


def load_quantized(
    path: str | Path, build: Callable[[], nn.Module]
) -> tuple[torch.fx.GraphModule, nn.Module, dict[str, Any]]:
    """Rebuild a prepared model saved by :func:`save_quantized`.

    ``build()`` gives the plain fp32 model (``space.build(arch)``); it is resized to the saved
    structure, prepared again and loaded strictly. Returns (prepared, fp32 model, info).
    """
    ckpt = read_checkpoint(path)
    if ckpt.kind not in QUANT_KINDS:
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint; expected one of {QUANT_KINDS} "
            "(written by save_quantized)"
        )
    shape = ckpt.info.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise CheckpointError(f"{path}: its description lacks the input shape (info.input_shape)")
    model = build()
    apply_structure(model, ckpt.structure)
    fp32 = {k[len(_FP32) :]: v for k, v in ckpt.tensors.items() if k.startswith(_FP32)}
    quant = {k[len(_QUANT) :]: v for k, v in ckpt.tensors.items() if k.startswith(_QUANT)}
    load_state_strict(model, fp32, f"{path} (fp32 model)")
    prepared = prepare(
        model,
        shape,
        kind=ckpt.kind,
        per_channel=bool(ckpt.info.get("per_channel", True)),
        weight_bits=int(ckpt.info.get("weight_bits", 8)),
    )
    load_state_strict(prepared, quant, f"{path} (quantized model)")
    with _cached_patterns():
        prepared.eval()
    return prepared, model.eval(), ckpt.info

"""int8 through PyTorch's PT2E flow: preparing a model, post-training quantization, checkpoints.

torchao's PT2E entry points (``prepare_pt2e`` / ``prepare_qat_pt2e``, then ``convert_pt2e``:
:func:`nas.backends.convert`) with ExecuTorch's ``XNNPACKQuantizer``
(:func:`nas.backends.xnnpack_quantizer`): weights int8 symmetric per output channel, activations
int8 per tensor (asymmetric), the scheme XNNPACK runs natively. PTQ calibrates observers on a
few hundred training images; QAT (:mod:`nas.compress.qat`) starts from the same preparation.

Checkpoints of a prepared model hold, in safetensors, the fp32 model it came from and the
prepared model's state (weights, batch-norm statistics, observer ranges, scales and zero
points). Loading rebuilds the fp32 model from its structure, prepares it again (the graph is
deterministic) and loads the state strictly, so nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.backends import cached_pt2e_patterns, check_weight_bits, torchao_pt2e, xnnpack_quantizer
from nas.compress.checkpoint import (
    CheckpointError,
    apply_structure,
    load_state_strict,
    module_structure,
    read_checkpoint,
    save_state,
)

__all__ = [
    "QUANT_KINDS",
    "calibrate_observers",
    "calibration_batches",
    "load_quantized",
    "prepare",
    "ptq",
    "save_quantized",
]

QUANT_KINDS = ("ptq", "qat")
_FP32, _QUANT = "fp32/", "quant/"  # key prefixes of the two states in a quantized checkpoint
_MAX_BATCH = 1 << 16  # upper bound of the dynamic batch dimension of a prepared model


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
    pt2e = torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    shape = tuple(int(s) for s in input_shape)
    example = torch.zeros((2, *shape))  # 2 x C x H x W: batch 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    model = copy.deepcopy(model)  # the prepared graph must not share tensors with `model`
    model.train(kind == "qat")
    with warnings.catch_warnings(), cached_pt2e_patterns():
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
    with cached_pt2e_patterns():
        prepared.eval()
    seen = 0
    for x in batches:
        prepared(x)
        seen += len(x)
    if seen == 0:
        raise ValueError("calibration needs at least one batch of images; got none")
    return seen


def calibration_batches(
    images: torch.Tensor, n: int, batch_size: int, seed: int
) -> list[torch.Tensor]:
    """``n`` images drawn (seeded) from ``images``, in batches of ``batch_size``."""
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
    calibrate_observers(prepared, calibration_batches(calibration_images, n_images, 64, seed))
    return prepared


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
            path,
            f"holds a {ckpt.kind!r} checkpoint; expected one of {QUANT_KINDS} "
            "(written by save_quantized)",
            "name a quantized checkpoint",
        )
    shape = ckpt.info.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise CheckpointError(
            path,
            "its description lacks the input shape (info.input_shape)",
            "delete it and its .json to redo the step that wrote it",
        )
    model = build()
    apply_structure(model, ckpt.structure, path)
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
    with cached_pt2e_patterns():
        prepared.eval()
    return prepared, model.eval(), ckpt.info

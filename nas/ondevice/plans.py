"""Update plans: which parameters of a deployed network train on the device (TinyTL's biases,
Cai et al., NeurIPS 2020; MCUNetV3's sparse update, Lin et al., NeurIPS 2022).

A plan is a set of parameter names, so it applies to any module of any space. A *block* is
the group of parameters that share a name prefix up to the first numbered module
(``blocks.3``, ``cells.16``, ``layers.21``) or, for a module outside any numbered container, its
top-level child (``stem``, ``head``, ``classifier``); blocks are ordered as the network
declares them, so "the last k blocks" are the k groups nearest the output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from torch import nn

__all__ = [
    "MODES",
    "OPTIONAL_MODES",
    "UpdatePlan",
    "block_of",
    "blocks",
    "make_plan",
    "parameter_layers",
]

MODES: dict[str, str] = {
    "full": "every parameter trains",
    "last": "the last k blocks train (k = --blocks), the rest is frozen",
    "bias": "biases only (TinyTL): batch-norm shifts and layer biases",
    "bn_bias": "batch-norm scales and shifts, and layer biases",
    "sparse": "the layers a measured gain per byte picks under a budget (MCUNetV3)",
}

#: modes that need the network changed first (``lite_residual``: `add_lite_residuals`)
OPTIONAL_MODES: dict[str, str] = {
    "lite_residual": "TinyTL: biases and a lite residual branch beside each block "
    "(on a network with its branches added: add_lite_residuals)",
}

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class UpdatePlan:
    """What trains: a mode, its setting, and the trainable parameter names (sorted)."""

    mode: str
    trainable: tuple[str, ...]
    blocks_k: int = 0  # the k of mode "last"
    layers: tuple[str, ...] = ()  # the layers (module paths) of mode "sparse"
    #: how a plan chosen under a budget was checked against it: "model" (the memory model, with
    #: its margin) or "program" (the exported training program's own plan); "" when no budget
    budget_check: str = ""

    def trains(self, name: str) -> bool:
        return name in self._trainable_set

    @cached_property
    def _trainable_set(self) -> frozenset[str]:
        return frozenset(self.trainable)

    def describe(self) -> str:
        if self.mode == "last":
            return f"last {self.blocks_k} block(s)"
        if self.mode == "sparse":
            return f"sparse: {len(self.layers)} layer(s)"
        return self.mode

    def apply(self, module: nn.Module) -> None:
        """Mark the plan's parameters trainable and every other frozen (``requires_grad``)."""
        names = {n for n, _ in module.named_parameters()}
        missing = set(self.trainable) - names
        if missing:
            raise ValueError(
                f"the plan trains parameters the module lacks: {sorted(missing)[:5]}; "
                "was it made for another arch?"
            )
        for name, param in module.named_parameters():
            param.requires_grad_(name in self._trainable_set)


def block_of(param_name: str) -> str:
    """The block a parameter belongs to (see the module docstring)."""
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def blocks(module: nn.Module) -> list[str]:
    """The module's blocks in declaration order."""
    seen: dict[str, None] = {}
    for name, _ in module.named_parameters():
        seen.setdefault(block_of(name), None)
    return list(seen)


def parameter_layers(module: nn.Module) -> dict[str, list[str]]:
    """Each module that owns parameters directly (a layer) -> its parameter names, in order."""
    layers: dict[str, list[str]] = {}
    for name, _ in module.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    return layers


def _is_norm(module: nn.Module, layer: str) -> bool:
    return isinstance(module.get_submodule(layer), _NORMS)


def make_plan(
    module: nn.Module,
    mode: str,
    blocks_k: int = 1,
    layers: Iterable[str] = (),
) -> UpdatePlan:
    """The update plan of `mode` (one of :data:`MODES`) for `module`.

    ``last`` trains the last `blocks_k` blocks; ``lite_residual`` (an optional mode) trains
    every bias and the lite residual branches of a network `add_lite_residuals` made; ``sparse`` trains the whole of each layer named
    in `layers` (module paths, as :func:`parameter_layers` lists them); the selection by gain
    per byte lives in :mod:`nas.ondevice.sparse`.
    """
    if mode not in MODES and mode not in OPTIONAL_MODES:
        raise ValueError(f"unknown update mode {mode!r}; valid: {sorted(MODES | OPTIONAL_MODES)}")
    names = [n for n, _ in module.named_parameters()]
    if mode == "lite_residual":
        chosen = _lite_residual_names(module)
    elif mode == "full":
        chosen = names
    elif mode == "last":
        order = blocks(module)
        if not 1 <= blocks_k <= len(order):
            raise ValueError(
                f"mode 'last' needs 1 <= blocks <= {len(order)} (the network's blocks), "
                f"got {blocks_k}"
            )
        keep = set(order[-blocks_k:])
        chosen = [n for n in names if block_of(n) in keep]
    elif mode == "bias":
        chosen = [n for n in names if n.endswith("bias")]
    elif mode == "bn_bias":
        chosen = [n for n in names if n.endswith("bias") or _is_norm(module, n.rpartition(".")[0])]
    else:
        chosen = _sparse_names(module, layers)
    return UpdatePlan(
        mode=mode,
        trainable=tuple(sorted(chosen)),
        blocks_k=blocks_k if mode == "last" else 0,
        layers=tuple(layers) if mode == "sparse" else (),
    )


def _sparse_names(module: nn.Module, layers: Iterable[str]) -> list[str]:
    by_layer = parameter_layers(module)
    chosen: list[str] = []
    unknown = [layer for layer in layers if layer not in by_layer]
    if unknown:
        raise ValueError(
            f"sparse plan names layers the module lacks: {unknown[:5]}; valid: "
            f"{list(by_layer)[:8]}..."
        )
    for layer in layers:
        chosen += by_layer[layer]
    return chosen


def _lite_residual_names(module: nn.Module) -> list[str]:
    from nas.ondevice.residual import LiteResidual

    branches = [n for n, m in module.named_modules() if isinstance(m, LiteResidual)]
    if not branches:
        raise ValueError(
            "mode 'lite_residual' trains the lite residual branches of a network that has them: "
            "add them first with nas.ondevice.add_lite_residuals(net, input_shape)"
        )
    inside = tuple(f"{b}." for b in branches)
    return [n for n, _ in module.named_parameters() if n.endswith("bias") or n.startswith(inside)]

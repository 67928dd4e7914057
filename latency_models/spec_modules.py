"""A runnable `nn.Module` for one `LayerSpec`, so a real runtime can time the layer on its own.

A spec says what a layer costs, not how its weights were made, so the module built here is a
stand-in with the same shapes, kernel, stride, groups and activation: what decides its latency.
Batch norms and activations that the tracer folded into a conv are folded here too (a conv with
bias, then the activation), as runtimes fold them. Binary element-wise ops (`add`, `mul`) read a
second operand of the input's shape: a constant tensor held by the module, as a residual add
reads a second activation. Block kinds priced as one unit (OFA's `expanded_conv`) are rebuilt
from `nas.core.blocks.MBConv`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas.core.blocks import ACTIVATIONS as BLOCK_ACTIVATIONS
from nas.core.blocks import MBConv
from nas.core.layers import LayerSpec

__all__ = [
    "FREE_OPS",
    "SUPPORTED_OPS",
    "UnsupportedSpecError",
    "is_free",
    "module_for_spec",
]

#: Ops that move no data in a runtime (reshapes the tracer saw as copies-in-name-only): priced
#: at zero and never measured.
FREE_OPS: frozenset[str] = frozenset(
    {"_unsafe_view", "view", "reshape", "flatten", "squeeze", "unsqueeze", "identity"}
)

# Never in place: a stand-alone activation would mutate the module's input, which exported
# programs cannot hold (torch.export fails to unlift a mutated user input).
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
    "hardtanh": nn.Hardtanh,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
assert set(BLOCK_ACTIVATIONS) - {"none"} <= set(_ACTIVATIONS)


class UnsupportedSpecError(ValueError):
    """A spec whose op kind (or fields) no stand-in module can be built for."""


class _Binary(nn.Module):
    """`x (op) c` with a constant second operand of x's shape: a residual add or a gate."""

    def __init__(self, shape: tuple[int, ...], op: str) -> None:
        super().__init__()
        n = 1
        for d in shape:
            n *= d
        # deterministic values in [0.5, 1.5]: no runtime can fold them away as 0 or 1
        self.register_buffer("other", torch.linspace(0.5, 1.5, n).reshape(1, *shape))
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.get_buffer("other")
        return x + other if self.op == "add" else x * other


class _Concat(nn.Module):
    """Concatenate x with a constant along channels, up to the spec's output channels."""

    def __init__(self, in_shape: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        extra = out_channels - in_shape[0]
        self.register_buffer("other", torch.zeros((1, extra, *in_shape[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.get_buffer("other")
        return torch.cat([x, other], dim=1)


class _GlobalMean(nn.Module):
    """Global average pool to a (N, C) vector (the tracer's `mean` with output (C,))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class _Copy(nn.Module):
    """A real copy of the whole tensor: the tracer's `copy` is what makes a transposed view
    contiguous (a channel shuffle's reshape after its transpose), so the stand-in does that:
    reads its input as (d1, d0, ...) and writes it out as (d0, d1, ...), a permutation every
    runtime runs as one transpose (XNNPACK delegates it, as in the network). Where the first
    two dimensions cannot make a permutation (either is 1, or the tensor has fewer), a flip:
    it too moves every element, and no graph optimiser removes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] == 1 or x.shape[2] == 1:
            return x.flip(-1)
        n, d0, d1, *rest = x.shape
        return x.reshape(n, d1, d0, *rest).transpose(1, 2).contiguous()


def _activation(name: str, spec: LayerSpec) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise UnsupportedSpecError(
            f"activation {name!r} of {spec.key!r} has no stand-in; valid: {sorted(_ACTIVATIONS)}"
        ) from None


def _padding(size: int, out: int, kernel: int, stride: int, spec: LayerSpec) -> int:
    for pad in (kernel // 2, 0, (kernel - 1) // 2):
        if (size + 2 * pad - kernel) // stride + 1 == out:
            return pad
    raise UnsupportedSpecError(
        f"no padding gives output size {out} from input size {size} with kernel {kernel} and "
        f"stride {stride} in {spec.key!r}"
    )


def _conv(spec: LayerSpec) -> nn.Module:
    c_in, h, _ = _feature_map(spec, "input_shape")
    c_out, ho, _ = _feature_map(spec, "output_shape")
    kernel = spec.kernel or 1
    pad = _padding(h, ho, kernel, spec.stride, spec)
    if c_in % spec.groups or c_out % spec.groups:
        raise UnsupportedSpecError(
            f"groups={spec.groups} must divide input and output channels ({c_in}, {c_out}) "
            f"in {spec.key!r}"
        )
    conv = nn.Conv2d(c_in, c_out, kernel, spec.stride, pad, groups=spec.groups, bias=True)
    if spec.activation == "none":
        return conv
    return nn.Sequential(conv, _activation(spec.activation, spec))


def _linear(spec: LayerSpec) -> nn.Module:
    in_f = _numel(spec.input_shape)
    out_f = _numel(spec.output_shape)
    layers: list[nn.Module] = []
    if len(spec.input_shape) > 1:
        layers.append(nn.Flatten(1))
    layers.append(nn.Linear(in_f, out_f))
    if spec.activation != "none":
        layers.append(_activation(spec.activation, spec))
    if len(spec.output_shape) > 1:
        layers.append(nn.Unflatten(1, tuple(spec.output_shape)))
    return nn.Sequential(*layers) if len(layers) > 1 else layers[0]


def _pool(spec: LayerSpec) -> nn.Module:
    _, h, _ = _feature_map(spec, "input_shape")
    _, ho, _ = _feature_map(spec, "output_shape")
    kernel = spec.kernel or 1
    pad = _padding(h, ho, kernel, spec.stride, spec)
    if spec.op == "maxpool":
        return nn.MaxPool2d(kernel, spec.stride, pad)
    # A spec does not say whether padding counts in the mean. Leave it out, as NAS cells do
    # (NAS-Bench-201's avg_pool_3x3) and as XNNPACK requires to take the op at all.
    return nn.AvgPool2d(kernel, spec.stride, pad, count_include_pad=False)


def _global_pool(spec: LayerSpec) -> nn.Module:
    _feature_map(spec, "input_shape")
    if len(spec.output_shape) == 1:
        return _GlobalMean()
    return nn.AdaptiveAvgPool2d(1)


def _expanded_conv(spec: LayerSpec) -> nn.Module:
    c_in, _, _ = _feature_map(spec, "input_shape")
    c_out, _, _ = _feature_map(spec, "output_shape")
    # OFA's first block has no 1x1 expansion: its middle width equals its input width.
    expand_conv = spec.expand != c_in
    block = MBConv(
        c_in,
        c_out,
        spec.expand or c_in,
        spec.kernel,
        spec.stride,
        act=spec.activation if spec.activation != "none" else "relu",
        se=spec.se,
        expand_conv=expand_conv,
    )
    if block.residual != spec.idskip:
        raise UnsupportedSpecError(
            f"{spec.key!r} says idskip={int(spec.idskip)} but stride {spec.stride} and channels "
            f"{c_in}->{c_out} give an MBConv with residual={block.residual}"
        )
    return block


def _bn(spec: LayerSpec) -> nn.Module:
    c, _, _ = _feature_map(spec, "input_shape")
    return nn.BatchNorm2d(c)


_BUILDERS: dict[str, Callable[[LayerSpec], nn.Module]] = {
    "conv": _conv,
    "linear": _linear,
    "avgpool": _pool,
    "maxpool": _pool,
    "global_avgpool": _global_pool,
    "add": lambda s: _Binary(tuple(s.input_shape), "add"),
    "mul": lambda s: _Binary(tuple(s.input_shape), "mul"),
    "concat": lambda s: _Concat(tuple(s.input_shape), int(s.output_shape[0])),
    "act": lambda s: _activation(s.activation, s),
    "bn": _bn,
    "copy": lambda s: _Copy(),
    "expanded_conv": _expanded_conv,
}

#: Op kinds a stand-in module can be built for (FREE_OPS need none: they cost nothing).
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_BUILDERS))


def is_free(spec: LayerSpec) -> bool:
    """True for ops that move no data (reshapes): priced at zero, never measured."""
    return spec.op in FREE_OPS


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _feature_map(spec: LayerSpec, which: str) -> tuple[int, int, int]:
    shape = getattr(spec, which)
    if len(shape) != 3:
        raise UnsupportedSpecError(
            f"{spec.op!r} needs a (C, H, W) {which}; {spec.key!r} has {tuple(shape)}"
        )
    c, h, w = (int(s) for s in shape)
    return c, h, w


def module_for_spec(spec: LayerSpec, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A stand-in module for `spec` and its input shape *with* the batch dimension (1, ...).

    The module's output shape is checked against the spec's. Raises `UnsupportedSpecError`
    listing the supported op kinds for anything else (free ops included: they need no module).
    """
    builder = _BUILDERS.get(spec.op)
    if builder is None:
        free = f" ({spec.op!r} is a free op: it costs nothing and is never measured)"
        raise UnsupportedSpecError(
            f"no stand-in module for op kind {spec.op!r} in {spec.key!r}"
            + (free if spec.op in FREE_OPS else "")
            + f"; supported op kinds: {', '.join(SUPPORTED_OPS)}"
        )
    input_shape = (1, *(int(s) for s in spec.input_shape))
    with torch.device("meta"):  # shapes only: no weights allocated, no arithmetic
        check_output_shape(spec, builder(spec).eval(), device="meta")
    # Seeded weights: the same spec gives the same module, so runtimes' artifact caches (keyed
    # by content, weights included) hit on every later build of the same layer.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = builder(spec).eval()
    return module, input_shape


def check_output_shape(spec: LayerSpec, module: nn.Module, device: str = "cpu") -> None:
    """Run `module` once on zeros and compare its output shape with the spec's."""
    with torch.no_grad():
        out = module(torch.zeros((1, *spec.input_shape), device=device))  # 1 x input_shape
    if tuple(out.shape[1:]) != tuple(spec.output_shape):
        raise UnsupportedSpecError(
            f"the stand-in for {spec.key!r} gives output shape {tuple(out.shape[1:])}, "
            f"the spec says {tuple(spec.output_shape)}"
        )

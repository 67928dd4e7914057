"""Which elements of a shared model each client's sub-model holds, and their slice-wise average.

A client trains a sub-model of one full-size model: a subnet of a weight-sharing supernet
(width, depth, kernel, expansion: Once-for-All's slicing), or one fixed network at a fraction
of its width (HeteroFL, Diao et al., ICLR 2021: each hidden layer keeps its first
``ceil(ratio * channels)`` channels). Either way a sub-model is a boolean mask over every tensor
of the full model's state dict; the server averages every element over the clients whose mask
holds it, weighted by their sample counts, and keeps its own value where no client holds it
(`aggregate_held`). Clients send and receive only the held elements (`take_held`,
`put_held`), in a fixed order, so the bytes on the wire are those of the sub-model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.core.elastic import (
    Elastic,
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLinear,
    Supernet,
)

__all__ = [
    "HeldUpdate",
    "Masks",
    "aggregate_held",
    "held_bytes",
    "put_held",
    "supernet_masks",
    "take_held",
    "width_masks",
    "width_scaled",
]

Masks = dict[str, Tensor]  # state-dict name -> bool tensor of that entry's shape


@dataclass(frozen=True)
class HeldUpdate:
    """One client's reply: the values of the elements its mask holds, and its sample count."""

    masks: Mapping[str, Tensor]
    values: Mapping[str, Tensor]  # name -> 1-D, the held elements in row-major order
    num_examples: int


def _called_modules(model: nn.Module, probe: Callable[[], Any]) -> set[str]:
    """Names of the modules that run when `probe()` calls `model` (forward pre-hooks)."""
    called: set[str] = set()
    handles = [
        m.register_forward_pre_hook(lambda _m, _a, n=name: called.add(n))
        for name, m in model.named_modules()
    ]
    try:
        with torch.no_grad():
            probe()
    finally:
        for h in handles:
            h.remove()
    return called


def _prefix(shape: Sequence[int], sizes: Sequence[int | slice]) -> Tensor:
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    index = tuple(s if isinstance(s, slice) else slice(0, s) for s in sizes)
    mask[index] = True
    return mask


def _conv_masks(conv: ElasticConv2d) -> dict[str, Tensor]:
    """The weight elements the active config reads: the channel prefix and the kernel's
    centre; with OFA's kernel transforms a smaller kernel reads the centre of the second
    largest size (the first crop) and the transform matrices on its way down."""
    ks, k = conv.kernel_sizes, conv.active_kernel
    kmax = ks[-1]
    crop = kmax if k == kmax else (ks[-2] if conv.transform_kernels else k)
    start = (kmax - crop) // 2
    window = slice(start, start + crop)
    c_in = 1 if conv.depthwise else conv.active_in
    out = {"weight": _prefix(conv.weight.shape, [conv.active_out, c_in, window, window])}
    if conv.bias is not None:
        out["bias"] = _prefix(conv.bias.shape, [conv.active_out])
    if conv.transform_kernels:
        for big, small in itertools.pairwise(ks[::-1]):
            name = f"transform_{big}to{small}"
            out[name] = torch.full(getattr(conv, name).shape, big > k, dtype=torch.bool)
    return out


def _module_masks(module: nn.Module) -> dict[str, Tensor]:
    """Masks of `module`'s own parameters and persistent buffers under its active config."""
    if isinstance(module, ElasticConv2d):
        return _conv_masks(module)
    if isinstance(module, ElasticBatchNorm2d):
        out = {
            name: _prefix(t.shape, [module.active])
            for name in ("weight", "bias", "running_mean", "running_var")
            if (t := getattr(module, name)) is not None
        }
        if module.num_batches_tracked is not None:
            out["num_batches_tracked"] = torch.ones((), dtype=torch.bool)
        return out
    if isinstance(module, ElasticLinear):
        out = {"weight": _prefix(module.weight.shape, [module.active_out, module.active_in])}
        if module.bias is not None:
            out["bias"] = _prefix(module.bias.shape, [module.active_out])
        return out
    own: dict[str, Tensor] = dict(module.named_parameters(recurse=False))
    own.update(
        (n, b)
        for n, b in module.named_buffers(recurse=False)
        if n not in module._non_persistent_buffers_set
    )
    if own and isinstance(module, Elastic):
        raise NotImplementedError(
            f"{type(module).__name__} slices its own tensors {sorted(own)} in a way "
            "nas.federated does not know; teach nas.federated.slices._module_masks its rule"
        )
    return {n: torch.ones(t.shape, dtype=torch.bool) for n, t in own.items()}


def _masks_of_called(model: nn.Module, called: set[str]) -> Masks:
    masks: Masks = {}
    for name, module in model.named_modules():
        if name not in called:
            continue
        for tensor_name, mask in _module_masks(module).items():
            masks[f"{name}.{tensor_name}" if name else tensor_name] = mask
    return {
        name: masks.get(name, torch.zeros(t.shape, dtype=torch.bool))
        for name, t in model.state_dict().items()
    }


def supernet_masks(supernet: Supernet, arch: Mapping[str, Any]) -> Masks:
    """Per state-dict entry of `supernet`, the elements the subnet `arch` holds: those of the
    modules its forward pass runs (skipped blocks and unchosen candidates hold nothing), sliced
    as each elastic module slices under `arch`. The supernet's arch and mode are restored."""
    shape = supernet.space.input_shape(dict(arch))
    was_training = supernet.training
    supernet.eval()
    try:
        with supernet.using(arch):
            called = _called_modules(supernet, lambda: supernet(torch.zeros(1, *shape)))
            return _masks_of_called(supernet, called)
    finally:
        supernet.train(was_training)


def _logits_layer(model: nn.Module) -> nn.Module:
    """The network's last Linear (its classifier): HeteroFL keeps all of its outputs."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("width scaling needs a network that ends in an nn.Linear classifier")
    return linears[-1]


def _scaled(channels: int, ratio: float) -> int:
    return max(1, math.ceil(ratio * channels - 1e-9))


def _conv_forward(m: nn.Conv2d, ratio: float, used: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:  # x: N x C' x H x W, C' the scaled input width
        c_in = x.size(1)
        if m.groups == m.in_channels == m.out_channels:  # depthwise: follows its input
            out, groups, w = c_in, c_in, m.weight[:c_in]
        elif m.groups == 1:
            out, groups = _scaled(m.out_channels, ratio), 1
            w = m.weight[:out, :c_in]
        else:
            raise NotImplementedError(f"width scaling of a grouped conv (groups={m.groups})")
        used[_m_name(m)] = (out, w.shape[1])
        bias = None if m.bias is None else m.bias[:out]
        padding: Any = m.padding
        return F.conv2d(x, w, bias, m.stride, padding, m.dilation, groups)  # N x out x H' x W'

    return forward


def _bn_forward(m: nn.BatchNorm2d, used: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:  # x: N x C' x H x W
        c = x.size(1)
        used[_m_name(m)] = (c,)
        factor = 0.0 if m.momentum is None else m.momentum
        if m.training and m.num_batches_tracked is not None:
            m.num_batches_tracked.add_(1)
            factor = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
        mean = None if m.running_mean is None else m.running_mean[:c]  # views: updated in place
        var = None if m.running_var is None else m.running_var[:c]
        weight = None if m.weight is None else m.weight[:c]
        bias = None if m.bias is None else m.bias[:c]
        batch_stats = m.training or mean is None
        return F.batch_norm(x, mean, var, weight, bias, batch_stats, factor, m.eps)

    return forward


def _linear_forward(
    m: nn.Linear, ratio: float, keep_out: bool, used: dict[str, Any]
) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:  # x: N x in'
        out = m.out_features if keep_out else _scaled(m.out_features, ratio)
        used[_m_name(m)] = (out, x.size(1))
        bias = None if m.bias is None else m.bias[:out]
        return F.linear(x, m.weight[:out, : x.size(1)], bias)  # N x out

    return forward


def _m_name(module: nn.Module) -> str:
    name: str = getattr(module, "_width_scaled_name", "")
    return name


@contextmanager
def width_scaled(model: nn.Module, ratio: float) -> Iterator[dict[str, Any]]:
    """Run `model` (a plain network of Conv2d, BatchNorm2d and Linear layers) at HeteroFL's
    width `ratio`: every hidden layer keeps its first ``ceil(ratio * channels)`` channels, a
    depthwise conv follows its input, the classifier keeps every output. Yields the slices the
    forward passes used (module name -> sizes), for `width_masks`."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"a width ratio must be in (0, 1]; got {ratio!r}")
    used: dict[str, Any] = {}
    logits = _logits_layer(model)
    patched: list[nn.Module] = []
    try:
        for name, m in model.named_modules():
            fwd: Callable[[Tensor], Tensor] | None = None
            if isinstance(m, nn.Conv2d):
                fwd = _conv_forward(m, ratio, used)
            elif isinstance(m, nn.BatchNorm2d):
                fwd = _bn_forward(m, used)
            elif isinstance(m, nn.Linear):
                fwd = _linear_forward(m, ratio, m is logits, used)
            if fwd is not None:
                m._width_scaled_name = name
                m.forward = fwd
                patched.append(m)
        yield used
    finally:
        for m in patched:
            del m.forward
            del m._width_scaled_name


def width_masks(model: nn.Module, ratio: float, input_shape: Sequence[int]) -> Masks:
    """Per state-dict entry of `model`, the elements its HeteroFL sub-model at `ratio` holds."""
    was_training = model.training
    model.eval()
    try:
        with width_scaled(model, ratio) as used:
            called = _called_modules(model, lambda: model(torch.zeros(1, *input_shape)))
    finally:
        model.train(was_training)
    masks: Masks = {}
    for name, m in model.named_modules():
        if name not in called:
            continue
        sizes = used.get(name)
        for t_name, t in itertools.chain(
            m.named_parameters(recurse=False), m.named_buffers(recurse=False)
        ):
            if t_name in m._non_persistent_buffers_set:
                continue
            full = f"{name}.{t_name}" if name else t_name
            if sizes is None or t.dim() == 0:  # a layer width scaling leaves alone
                masks[full] = torch.ones(t.shape, dtype=torch.bool)
            else:
                masks[full] = _prefix(t.shape, list(sizes)[: t.dim()])
    return {
        n: masks.get(n, torch.zeros(t.shape, dtype=torch.bool))
        for n, t in model.state_dict().items()
    }


def take_held(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The held elements of each floating-point entry (1-D, row-major), for entries holding
    any; in the state's order. Integer entries (batch-norm batch counters, which nothing reads
    while a momentum is set) stay where they are: they carry no learning, and an update of them
    could not be clipped or noised for privacy."""
    return {
        name: t.detach()[masks[name]].clone()
        for name, t in state.items()
        if t.is_floating_point() and bool(masks[name].any())
    }


def put_held(model: nn.Module, masks: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> None:
    """Write held values into `model`'s tensors in place; other elements keep their values."""
    state = model.state_dict()
    with torch.no_grad():
        for name, v in values.items():
            if name not in state:
                raise KeyError(f"{name!r} is not an entry of the model's state dict")
            mask = masks[name]
            if int(mask.sum()) != v.numel():
                raise ValueError(
                    f"{name}: the sub-model holds {int(mask.sum())} elements but {v.numel()} "
                    "values came; server and client disagree on the sub-model"
                )
            state[name][mask] = v.to(state[name].dtype).reshape(-1)


def held_bytes(values: Mapping[str, Tensor]) -> int:
    """Bytes of the held values (what travels each way per round)."""
    return sum(v.numel() * v.element_size() for v in values.values())


def aggregate_held(state: Mapping[str, Tensor], updates: Sequence[HeldUpdate]) -> dict[str, Tensor]:
    """The slice-wise weighted average: each element is averaged over the updates whose mask
    holds it, weighted by `num_examples`; an element no update holds keeps `state`'s value.
    Sums run in float64 in the order of `updates` (callers sort them), so a rerun gives the
    same bits. Integer entries (batch counters) take the largest value any holder reports."""
    out: dict[str, Tensor] = {}
    for name, current in state.items():
        holders = [u for u in updates if name in u.values]
        if not holders:
            out[name] = current.detach().clone()
            continue
        if not current.is_floating_point():
            top = max(int(u.values[name].max()) for u in holders)
            out[name] = torch.full_like(current, top)
            continue
        num = torch.zeros(current.shape, dtype=torch.float64)
        den = torch.zeros(current.shape, dtype=torch.float64)
        for u in holders:
            if u.num_examples <= 0:
                raise ValueError(f"an update needs num_examples >= 1; got {u.num_examples}")
            mask = u.masks[name]
            num[mask] += float(u.num_examples) * u.values[name].to(torch.float64)
            den[mask] += float(u.num_examples)
        held = den > 0
        merged = current.detach().to(torch.float64).clone()
        merged[held] = num[held] / den[held]
        out[name] = merged.to(current.dtype)
    return out

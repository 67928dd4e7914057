"""Weight-sharing ops: one max-size weight sliced to any subnet, and exact export of a subnet.

Follows Once-for-All (Cai et al., ICLR 2020): output / input channel prefixes, kernel centre
crop (optionally through OFA's kernel transformation matrices), elastic depth by skipping the
trailing blocks of a stage; and one-shot mixed ops with one weight set per candidate (SPOS, Guo
et al., ECCV 2020; the NAS-Bench-201 one-shot cell). Unlike OFA there is no global state: a
`Supernet` sets its active arch in one validated place (`set_arch`), `using(arch)` restores the
previous one, and `export(arch)` returns exactly `space.build(arch)` with the sliced weights
loaded, so the export's layer specs and latency are those of `build`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.core.blocks import activation, se_channels
from nas.core.space import Arch, Primitive, SearchSpace

logger = logging.getLogger(__name__)

__all__ = [
    "Elastic",
    "ElasticBatchNorm2d",
    "ElasticConv2d",
    "ElasticConvBNAct",
    "ElasticLinear",
    "ElasticMBConv",
    "ElasticSqueezeExcite",
    "MixedOp",
    "Supernet",
    "active_state_dict",
    "resize_to",
]


class Elastic:
    """Marker for modules whose exported tensors are slices of their own (see `export_state`)."""

    def export_state(self, prefix: str) -> dict[str, Tensor]:
        """The tensors of the active sub-module, named as the static module names them."""
        raise NotImplementedError


def _check_range(what: str, value: int, maximum: int) -> None:
    if not 1 <= value <= maximum:
        raise ValueError(f"{what} must be in [1, {maximum}] (the max-size weight), got {value}")


class ElasticConv2d(nn.Conv2d, Elastic):
    """A conv whose weight is the prefix `[:out, :in]` and centre `k x k` of one max-size weight.

    `depthwise=True` makes it a depthwise conv (groups == channels == in == out). With
    `transform_kernels=True` a smaller kernel is not the plain centre crop but, as in OFA, the
    centre crop of the next larger active kernel passed through a learned (k*k x k*k) matrix
    (initialised to the identity, shared by all channels), step by step from the largest size.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: Sequence[int] = (1,),
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
        transform_kernels: bool = False,
    ) -> None:
        ks = tuple(sorted({int(k) for k in kernel_sizes}))
        if not ks or any(k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"kernel sizes must be odd ints >= 1, got {tuple(kernel_sizes)}")
        if depthwise and max_in != max_out:
            raise ValueError(f"a depthwise conv has in == out channels, got {max_in} and {max_out}")
        kmax = ks[-1]
        super().__init__(
            max_in, max_out, kmax, stride, kmax // 2, groups=max_in if depthwise else 1, bias=bias
        )
        self.kernel_sizes = ks
        self.depthwise = depthwise
        self.transform_kernels = transform_kernels and len(ks) > 1
        if self.transform_kernels:
            for big, small in itertools.pairwise(ks[::-1]):
                self.register_parameter(
                    f"transform_{big}to{small}", nn.Parameter(torch.eye(small * small))
                )
        self.active_in, self.active_out, self.active_kernel = max_in, max_out, kmax

    def configure(self, in_ch: int, out_ch: int, kernel: int | None = None) -> None:
        _check_range("input channels", in_ch, self.in_channels)
        _check_range("output channels", out_ch, self.out_channels)
        if self.depthwise and in_ch != out_ch:
            raise ValueError(f"a depthwise conv has in == out channels, got {in_ch} and {out_ch}")
        k = self.kernel_sizes[-1] if kernel is None else int(kernel)
        if k not in self.kernel_sizes:
            raise ValueError(f"kernel {k} is not one of this conv's sizes {self.kernel_sizes}")
        self.active_in, self.active_out, self.active_kernel = in_ch, out_ch, k

    def active_weight(self) -> Tensor:
        c_in = 1 if self.depthwise else self.active_in
        w = self.weight[: self.active_out, :c_in]  # O x I x Kmax x Kmax
        k, kmax = self.active_kernel, self.kernel_sizes[-1]
        if k == kmax:
            return w
        if not self.transform_kernels:
            start = (kmax - k) // 2
            return w[:, :, start : start + k, start : start + k]  # O x I x k x k
        sizes = self.kernel_sizes[::-1]
        for big, small in itertools.pairwise(sizes):
            if big <= k:
                break
            start = (big - small) // 2
            crop = w[:, :, start : start + small, start : start + small].contiguous()
            matrix = getattr(self, f"transform_{big}to{small}")  # s*s x s*s
            flat = F.linear(crop.reshape(-1, small * small), matrix)  # (O*I) x s*s
            w = flat.reshape(crop.shape)  # O x I x small x small
        return w

    def active_bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias[: self.active_out]

    def forward(self, x: Tensor) -> Tensor:  # x: N x in x H x W
        if x.size(1) != self.active_in:
            raise RuntimeError(
                f"ElasticConv2d is configured for {self.active_in} input channels but got "
                f"{x.size(1)}: the supernet's active arch and its input disagree"
            )
        groups = self.active_in if self.depthwise else 1
        return F.conv2d(
            x,
            self.active_weight(),
            self.active_bias(),
            self.stride,
            self.active_kernel // 2,
            1,
            groups,
        )  # N x out x H' x W'

    def export_state(self, prefix: str) -> dict[str, Tensor]:
        out = {prefix + "weight": self.active_weight().detach().clone()}
        bias = self.active_bias()
        if bias is not None:
            out[prefix + "bias"] = bias.detach().clone()
        return out


class ElasticBatchNorm2d(nn.BatchNorm2d, Elastic):
    """Batch norm over the first `active` channels of its max-size statistics and affine.

    The running statistics of the prefix are updated in place (views), as in OFA; so every
    subnet's statistics live in the one buffer, and `nas.supernet.recalibrate_bn` re-estimates a
    subnet's own before it is judged.
    """

    def __init__(self, max_channels: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(max_channels, eps=eps, momentum=momentum)
        self.active = max_channels

    def configure(self, channels: int) -> None:
        _check_range("batch-norm channels", channels, self.num_features)
        self.active = channels

    def forward(self, x: Tensor) -> Tensor:  # x: N x active x H x W
        c = self.active
        if x.size(1) != c:
            raise RuntimeError(
                f"ElasticBatchNorm2d is configured for {c} channels but got {x.size(1)}"
            )
        # nn.BatchNorm2d.forward's logic, on the channel prefix.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        mean = self.running_mean[:c] if track and self.running_mean is not None else None
        var = self.running_var[:c] if track and self.running_var is not None else None
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        return F.batch_norm(x, mean, var, weight, bias, use_batch_stats, factor, self.eps)

    def export_state(self, prefix: str) -> dict[str, Tensor]:
        c = self.active
        out: dict[str, Tensor] = {}
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(self, name)
            if t is not None:
                out[prefix + name] = t[:c].detach().clone()
        if self.num_batches_tracked is not None:
            out[prefix + "num_batches_tracked"] = self.num_batches_tracked.detach().clone()
        return out


class ElasticLinear(nn.Linear, Elastic):
    """A linear layer over the first `active_in` input features (and `active_out` outputs)."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True) -> None:
        super().__init__(max_in, max_out, bias=bias)
        self.active_in, self.active_out = max_in, max_out

    def configure(self, in_features: int, out_features: int | None = None) -> None:
        out_features = self.out_features if out_features is None else out_features
        _check_range("input features", in_features, self.in_features)
        _check_range("output features", out_features, self.out_features)
        self.active_in, self.active_out = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:  # x: N x active_in
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.linear(x, self.weight[: self.active_out, : self.active_in], bias)  # N x out

    def export_state(self, prefix: str) -> dict[str, Tensor]:
        out = {prefix + "weight": self.weight[: self.active_out, : self.active_in].detach().clone()}
        if self.bias is not None:
            out[prefix + "bias"] = self.bias[: self.active_out].detach().clone()
        return out


class ElasticConvBNAct(nn.Sequential):
    """`nas.core.blocks.ConvBNAct` with an elastic conv and batch norm (same child names)."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: Sequence[int] = (1,),
        stride: int = 1,
        depthwise: bool = False,
        act: str = "relu",
        transform_kernels: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            ElasticConv2d(
                max_in,
                max_out,
                kernel_sizes,
                stride,
                depthwise=depthwise,
                transform_kernels=transform_kernels,
            ),
            ElasticBatchNorm2d(max_out),
        ]
        if act != "none":
            layers.append(activation(act))
        super().__init__(*layers)

    @property
    def conv(self) -> ElasticConv2d:
        conv = self[0]
        assert isinstance(conv, ElasticConv2d)
        return conv

    @property
    def bn(self) -> ElasticBatchNorm2d:
        bn = self[1]
        assert isinstance(bn, ElasticBatchNorm2d)
        return bn

    def configure(self, in_ch: int, out_ch: int, kernel: int | None = None) -> None:
        self.conv.configure(in_ch, out_ch, kernel)
        self.bn.configure(out_ch)


class ElasticSqueezeExcite(nn.Module):
    """`nas.core.blocks.SqueezeExcite` over the first `channels` channels (OFA's DynamicSE)."""

    def __init__(self, max_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduction = reduction
        max_mid = se_channels(max_channels, reduction)
        self.reduce = ElasticConv2d(max_channels, max_mid, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = ElasticConv2d(max_mid, max_channels, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def configure(self, channels: int) -> None:
        mid = se_channels(channels, self.reduction)
        self.reduce.configure(channels, mid)
        self.expand.configure(mid, channels)

    def forward(self, x: Tensor) -> Tensor:  # x: N x C x H x W
        s = x.mean((2, 3), keepdim=True)  # N x C x 1 x 1
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class ElasticMBConv(nn.Module):
    """`nas.core.blocks.MBConv` (expand -> depthwise -> [SE] -> project) with elastic in / mid / out
    channels and kernel; child names match MBConv's, so its export loads into MBConv."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_mid: int,
        kernel_sizes: Sequence[int],
        stride: int,
        act: str = "relu",
        se: bool = False,
        dw_act: bool = True,
        transform_kernels: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.expand = ElasticConvBNAct(max_in, max_mid, (1,), act=act)
        self.depthwise = ElasticConvBNAct(
            max_mid,
            max_mid,
            kernel_sizes,
            stride,
            depthwise=True,
            act=act if dw_act else "none",
            transform_kernels=transform_kernels,
        )
        self.se = ElasticSqueezeExcite(max_mid) if se else None
        self.project = ElasticConvBNAct(max_mid, max_out, (1,), act="none")
        self.active = (max_in, max_out, max_mid, max(kernel_sizes))

    def configure(self, in_ch: int, out_ch: int, mid: int, kernel: int) -> None:
        self.expand.configure(in_ch, mid)
        self.depthwise.configure(mid, mid, kernel)
        if self.se is not None:
            self.se.configure(mid)
        self.project.configure(mid, out_ch)
        self.active = (in_ch, out_ch, mid, kernel)

    @property
    def residual(self) -> bool:
        in_ch, out_ch, _, _ = self.active
        return self.stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:  # x: N x in x H x W
        y = self.depthwise(self.expand(x))  # N x mid x H' x W'
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)  # N x out x H' x W'
        return x + y if self.residual else y


class MixedOp(nn.Module, Elastic):
    """One layer choice with its own weights per candidate; the active one runs (one-shot)."""

    def __init__(self, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not candidates:
            raise ValueError("a MixedOp needs at least one candidate, got none")
        self.candidates = nn.ModuleDict(dict(candidates))
        self.active = next(iter(self.candidates))

    def choose(self, name: str) -> None:
        if name not in self.candidates:
            raise ValueError(f"unknown candidate {name!r}; valid: {list(self.candidates)}")
        self.active = name

    def forward(self, x: Tensor) -> Tensor:
        return self.candidates[self.active](x)

    def export_state(self, prefix: str) -> dict[str, Tensor]:
        return active_state_dict(self.candidates[self.active], prefix)


def active_state_dict(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The state a static module mirroring `module` under its active config would have.

    Elastic modules give their slices; any other module its own parameters and persistent
    buffers (copied); children are named as in `module`, so a supernet whose modules mirror the
    static network's names exports by walking itself.
    """
    if isinstance(module, Elastic):
        return module.export_state(prefix)
    out: dict[str, Tensor] = {}
    for name, p in module.named_parameters(recurse=False):
        out[prefix + name] = p.detach().clone()
    for name, b in module.named_buffers(recurse=False):
        if name not in module._non_persistent_buffers_set:
            out[prefix + name] = b.detach().clone()
    for name, child in module.named_children():
        out.update(active_state_dict(child, f"{prefix}{name}."))
    return out


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """`x` (N x C x H x W) at spatial size (H', W'), bilinear; unchanged when it already fits.

    Elastic resolution: training and evaluation feed each subnet its own input resolution.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)  # N x C x h x w


class Supernet(nn.Module):
    """A weight-sharing network over the archs of one space.

    Subclasses build their max-size modules, call `self.set_arch(self.largest_arch())` at the
    end of `__init__`, and implement `_configure(arch)` (push a validated arch into the elastic
    modules), `forward`, and `_subnet_state()` (the active subnet's tensors under the names of
    `space.build(arch)`'s state dict).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self._arch: Arch | None = None

    # -- the active arch ---------------------------------------------------------------------
    @property
    def arch(self) -> Arch:
        """A copy of the active arch."""
        if self._arch is None:
            raise RuntimeError(f"{type(self).__name__} has no active arch; call set_arch(arch)")
        return dict(self._arch)

    def set_arch(self, arch: Mapping[str, Any]) -> Arch:
        """Validate `arch` against the space and make it the active subnet (the one place)."""
        a = self.space.validate(arch)
        self._configure(a)
        self._arch = a
        return dict(a)

    @contextmanager
    def using(self, arch: Mapping[str, Any]) -> Iterator[Supernet]:
        """Run the block with `arch` active, then restore the previous arch (even on error)."""
        previous = self._arch
        self.set_arch(arch)
        try:
            yield self
        finally:
            if previous is not None:
                self.set_arch(previous)

    def _configure(self, arch: Arch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement _configure(arch)")

    # -- the extremes the sandwich rule trains -----------------------------------------------
    def largest_arch(self) -> Arch:
        """Per dimension the largest value (numeric dimensions); spaces of named ops override."""
        return self._extreme(max)

    def smallest_arch(self) -> Arch:
        return self._extreme(min)

    def _extreme(self, pick: Any) -> Arch:
        arch: dict[str, Primitive] = {}
        for k, c in self.space.dimensions().items():
            if not c.is_ordinal:
                raise NotImplementedError(
                    f"{type(self).__name__}: dimension {k!r} has named values {list(c.values)}; "
                    "override largest_arch() / smallest_arch() to say which is largest"
                )
            arch[k] = pick(c.values)
        return arch

    # -- export --------------------------------------------------------------------------------
    def _subnet_state(self) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _subnet_state()")

    def subnet_state_dict(self, arch: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """The state dict of `space.build(arch)` holding the supernet's (sliced) weights."""
        if arch is None:
            return self._subnet_state()
        with self.using(arch):
            return self._subnet_state()

    def export(self, arch: Mapping[str, Any] | None = None) -> nn.Module:
        """`space.build(arch)` with the sliced weights loaded: a standalone copy whose output
        equals the supernet's under `arch`, in the supernet's training mode and device."""
        a = self.arch if arch is None else self.space.validate(arch)
        model = self.space.build(a)
        state = self.subnet_state_dict(a)
        model.load_state_dict(state, strict=True)
        first = next(iter(self.parameters()), None)
        if first is not None:
            model.to(first.device)
        return model.train(self.training)

    def extra_repr(self) -> str:
        return f"space={self.space.name!r}"

"""LayerSpec, the neutral description of one layer that latency models price, and its derivation.

Any `nn.Module` can be described without writing latency code: `trace_layer_specs` runs the
module once on the meta device (shapes only, no arithmetic, no memory) under a
`TorchDispatchMode` that sees every aten op. Convolutions and matrix products become specs;
a batch norm and an activation that consume a conv's output alone are folded into that conv's
spec, as mobile runtimes fuse them. The same pass tracks which activation tensors are alive, so
each spec also carries the peak activation memory seen while it ran.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "DTYPE_BYTES",
    "ArchCost",
    "LayerSpec",
    "OpEvent",
    "OpRecorder",
    "Shape",
    "cost_from_specs",
    "count_params",
    "format_shape",
    "fuse_and_price",
    "record_ops",
    "trace_layer_specs",
]

Shape = tuple[int, ...]

# Element sizes of the dtypes a spec can name.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

# aten activation ops -> the activation name a spec records.
_ACTIVATIONS = {
    "relu": "relu",
    "relu_": "relu",
    "hardtanh": "relu6",
    "hardtanh_": "relu6",
    "hardswish": "hswish",
    "hardswish_": "hswish",
    "hardsigmoid": "hsigmoid",
    "hardsigmoid_": "hsigmoid",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "silu": "silu",
    "silu_": "silu",
    "gelu": "gelu",
    "tanh": "tanh",
    "leaky_relu": "leaky_relu",
}
_BATCH_NORMS = {"_native_batch_norm_legit_no_training", "native_batch_norm", "batch_norm"}
_POOLS = {
    "avg_pool2d": "avgpool",
    "max_pool2d": "maxpool",
    "max_pool2d_with_indices": "maxpool",
    "_adaptive_avg_pool2d": "global_avgpool",
    "adaptive_avg_pool2d": "global_avgpool",
    "mean": "global_avgpool",
}
_ELEMENTWISE = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "cat": "concat"}
# Ops that only allocate or copy memory: not priced as layers, but their outputs are live
# activations all the same.
_IGNORED = {"empty", "empty_like", "zeros", "zeros_like", "ones_like", "full", "detach"}


def format_shape(shape: Sequence[int]) -> str:
    """OFA's shape notation: channels last for feature maps (HxWxC), plain for vectors."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(s) for s in shape)


@dataclass(frozen=True)
class LayerSpec:
    """Everything that decides what one layer costs on a device, as a hashable value.

    Shapes exclude the batch dimension and are (C, H, W) for feature maps. `op` is a leaf kind
    from tracing (`conv`, `linear`, `add`, `mul`, `avgpool`, `global_avgpool`, ...) or a block
    kind priced as one unit (`expanded_conv`, OFA's `Conv`, `Logits`, ...). `name` replaces `op`
    in the key where a space names its rows (OFA's `Conv_1`). `macs`, `params` and
    `live_bytes` (activation bytes alive while the layer ran) are facts about the layer in its
    network, not part of its identity, so they do not enter equality or the key.
    """

    op: str
    input_shape: Shape
    output_shape: Shape
    kernel: int = 0
    stride: int = 1
    groups: int = 1
    expand: int = 0  # expanded (middle) channel count of an inverted bottleneck, 0 if none
    activation: str = "none"
    se: bool = False
    idskip: bool = False
    dtype: str = "fp32"
    name: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # further cost-relevant facts of custom kinds
    macs: int = field(default=0, compare=False)
    params: int = field(default=0, compare=False)
    live_bytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(
                f"LayerSpec dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}"
            )

    @property
    def key(self) -> str:
        """A readable, stable key in OFA's LUT notation (`expanded_conv-input:...`)."""
        parts = [
            self.name or self.op,
            f"input:{format_shape(self.input_shape)}",
            f"output:{format_shape(self.output_shape)}",
        ]
        if self.op == "expanded_conv":
            # Exactly the fields (and order) of Once-for-All's released lookup tables.
            parts += [
                f"expand:{self.expand}",
                f"kernel:{self.kernel}",
                f"stride:{self.stride}",
                f"idskip:{int(self.idskip)}",
                f"se:{int(self.se)}",
                f"hs:{int(self.activation == 'hswish')}",
            ]
        elif not self.name:
            if self.kernel:
                parts += [f"kernel:{self.kernel}", f"stride:{self.stride}"]
            if self.groups != 1:
                parts.append(f"groups:{self.groups}")
            if self.expand:
                parts.append(f"expand:{self.expand}")
            if self.activation != "none":
                parts.append(f"act:{self.activation}")
            if self.se:
                parts.append("se:1")
            if self.idskip:
                parts.append("idskip:1")
        parts += [f"{k}:{v}" for k, v in self.extra]
        if self.dtype != "fp32":
            parts.append(f"dtype:{self.dtype}")
        return "-".join(parts)

    def with_dtype(self, dtype: str) -> LayerSpec:
        """The same layer computed in `dtype`; activation memory scales with the element size."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
        live = math.ceil(self.live_bytes * DTYPE_BYTES[dtype] / DTYPE_BYTES[self.dtype])
        return dataclasses.replace(self, dtype=dtype, live_bytes=live)


@dataclass(frozen=True)
class ArchCost:
    """The free objectives of one arch, all derived from its layer specs."""

    macs: int
    params: int
    peak_activation_bytes: int

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6


def cost_from_specs(specs: Iterable[LayerSpec]) -> ArchCost:
    specs = list(specs)
    return ArchCost(
        macs=sum(s.macs for s in specs),
        params=sum(s.params for s in specs),
        peak_activation_bytes=max((s.live_bytes for s in specs), default=0),
    )


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _shape(t: torch.Tensor) -> Shape:
    return tuple(int(s) for s in t.shape[1:])  # drop the batch dimension


@dataclass
class OpEvent:
    """One aten op that computes something (views excluded), as recorded."""

    spec: LayerSpec  # its own spec, before fusion
    kind: str  # "compute" (conv, linear), "bn", "act" or "other"
    reads: list[int]  # dataflow tensor ids read
    writes: int  # dataflow tensor id written
    in_place: bool


def _leaf_spec(name: str, args: tuple[Any, ...], out: torch.Tensor) -> tuple[LayerSpec, str]:
    """The unfused spec of one aten op, and its fusion kind."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else out
    if name == "convolution":
        w, bias, stride, groups = args[1], args[2], args[3], int(args[8])
        return LayerSpec(
            op="conv",
            input_shape=_shape(x),
            output_shape=_shape(out),
            kernel=int(w.shape[-1]),
            stride=int(stride[0]),
            groups=groups,
            macs=out.numel() // out.shape[0] * w[0].numel(),
            params=w.numel() + (bias.numel() if bias is not None else 0),
        ), "compute"
    if name in ("addmm", "mm"):
        bias, x, wt = args if name == "addmm" else (None, *args)
        in_f, out_f = int(wt.shape[0]), int(wt.shape[1])
        return LayerSpec(
            op="linear",
            input_shape=_shape(x),
            output_shape=_shape(out),
            macs=(out.numel() // out.shape[0]) * in_f,
            params=in_f * out_f + (bias.numel() if bias is not None else 0),
        ), "compute"
    if name in _BATCH_NORMS:
        affine = sum(t.numel() for t in (args[1], args[2]) if isinstance(t, torch.Tensor))
        return LayerSpec("bn", _shape(x), _shape(out), params=affine), "bn"
    if name in _ACTIVATIONS:
        act = _ACTIVATIONS[name]
        if act == "relu6" and not (len(args) >= 3 and args[1] == 0.0 and args[2] == 6.0):
            act = "hardtanh"
        return LayerSpec("act", _shape(x), _shape(out), activation=act), "act"
    if name in _POOLS:
        op = _POOLS[name]
        if op == "global_avgpool" and out.dim() >= 3 and tuple(out.shape[-2:]) != (1, 1):
            op = "avgpool"
        kernel, stride = 0, 1
        if name in ("avg_pool2d", "max_pool2d", "max_pool2d_with_indices"):
            kernel = int(args[1][0])
            stride = int(args[2][0]) if len(args) > 2 and args[2] else kernel
        return LayerSpec(op, _shape(x), _shape(out), kernel=kernel, stride=stride), "other"
    if name in _ELEMENTWISE:
        first_in = args[0][0] if name == "cat" else x
        return LayerSpec(_ELEMENTWISE[name], _shape(first_in), _shape(out)), "other"
    if name in ("clone", "_to_copy", "copy_"):
        return LayerSpec("copy", _shape(x), _shape(out)), "other"
    # Anything else is still a cost a runtime pays: keep it, named after the aten op.
    return LayerSpec(name, _shape(x), _shape(out)), "other"


def _shape_only(name: str, args: tuple[Any, ...]) -> Any:
    """Outputs of common ops made directly, skipping PyTorch's meta kernels (its batch norm
    decomposes in Python and dominated tracing time). None: run the real meta kernel."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "meta":
        return None
    if name in ("_native_batch_norm_legit_no_training", "native_batch_norm"):
        return torch.empty_like(x), x.new_empty(0), x.new_empty(0)
    if (name in _ACTIVATIONS and len(args) == 1) or name in ("relu_", "hardswish_", "hardsigmoid_"):
        return x if name.endswith("_") else torch.empty_like(x)
    if name in ("add", "mul") and len(args) == 2:
        other = args[1]
        shape = (
            torch.broadcast_shapes(x.shape, other.shape)
            if isinstance(other, torch.Tensor)
            else x.shape
        )
        if isinstance(other, torch.Tensor) and other.dtype != x.dtype:
            return None
        return x.new_empty(shape)
    return None


class OpRecorder(TorchDispatchMode):
    """Records every computing aten op with the dataflow tensors it reads and writes.

    Subclass it to note more per op (``latency_models.graph`` notes zero products); run a
    module under it with :func:`record_ops` and turn the record into specs with
    :func:`fuse_and_price`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[OpEvent] = []
        self.tensor_bytes: list[int] = []
        # id(tensor) -> (weak reference, dataflow tensor id); views map to their source's id
        self._ids: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}

    def new_tensor(self, t: torch.Tensor) -> int:
        tid = len(self.tensor_bytes)
        self.tensor_bytes.append(_nbytes(t))
        self._ids[id(t)] = (weakref.ref(t), tid)
        return tid

    def tensor_id(self, t: Any) -> int | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._ids.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = func.overloadpacket.__name__
        out = _shape_only(name, args)
        if out is None:
            out = func(*args, **(kwargs or {}))
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        first = outputs[0] if outputs and isinstance(outputs[0], torch.Tensor) else None
        if first is None or name in _IGNORED:
            return out
        aliases = any(r.alias_info is not None for r in func._schema.returns)
        in_place = aliases and name.endswith("_")
        if aliases and not in_place:
            # views (reshape, flatten, transpose) cost nothing and stand for their source
            src = self.tensor_id(args[0]) if args else None
            if src is not None:
                self._ids[id(first)] = (weakref.ref(first), src)
            return out
        reads = [
            tid
            for a in args
            for t in (a if isinstance(a, (list, tuple)) else (a,))
            if (tid := self.tensor_id(t)) is not None
        ]
        spec, kind = _leaf_spec(name, args, first)
        # an in-place op writes a new value (a new dataflow tensor) into its input's buffer
        self.events.append(
            OpEvent(spec, kind, reads, self.new_tensor(first), in_place and bool(reads))
        )
        return out


def fuse_and_price(rec: OpRecorder, outputs: Sequence[Any], dtype: str) -> list[LayerSpec]:
    """Fuse conv/linear -> BN -> activation chains and price activation memory per spec.

    A BN or activation fuses into the conv/linear whose output it reads when nothing else reads
    that output, as runtimes fold them. Memory follows the dataflow, not Python's references: a
    buffer lives from the op that writes it to the last op that reads it (network outputs to
    the end), as in a runtime that frees buffers after their last use; a fused chain writes one
    buffer.
    """
    events = rec.events
    n_tensors = len(rec.tensor_bytes)
    readers = [0] * n_tensors
    for ev in events:
        for read in set(ev.reads):
            readers[read] += 1
    out_ids = {i for t in outputs if (i := rec.tensor_id(t)) is not None}
    for out_id in out_ids:
        readers[out_id] += 1

    buffer = list(range(n_tensors))  # dataflow tensor -> the buffer that holds it
    group_of: list[int] = []  # event -> index of the spec it belongs to
    groups: list[dict[str, Any]] = []
    writer_group: dict[int, int] = {}  # tensor -> group that wrote it
    for ev in events:
        src = ev.reads[0] if ev.reads else None
        g = writer_group.get(src) if src is not None else None
        target = groups[g] if g is not None else None
        fusable = (
            target is not None
            and src is not None
            and target["kind"] == "compute"
            and readers[src] == 1
            and target["spec"].activation == "none"
            and (ev.kind == "act" or (ev.kind == "bn" and not target["bn"]))
        )
        if fusable and target is not None and src is not None and g is not None:
            spec = target["spec"]
            if ev.kind == "bn":
                target["spec"] = dataclasses.replace(spec, params=spec.params + ev.spec.params)
                target["bn"] = True
            else:
                target["spec"] = dataclasses.replace(spec, activation=ev.spec.activation)
            buffer[ev.writes] = buffer[src]
            group_of.append(g)
        else:
            if ev.in_place and src is not None:
                buffer[ev.writes] = buffer[src]
            groups.append({"spec": ev.spec, "kind": ev.kind, "bn": False})
            group_of.append(len(groups) - 1)
            g = len(groups) - 1
        writer_group[ev.writes] = g

    # Liveness per buffer: from its first write to its last read.
    end = len(events)
    born = [end] * n_tensors
    last = [-1] * n_tensors
    for tid in range(n_tensors):
        if tid not in writer_group:  # the network input: alive from the start
            born[buffer[tid]] = 0
    for e, ev in enumerate(events):
        b = buffer[ev.writes]
        born[b] = min(born[b], e)
        last[b] = max(last[b], e)
        for tid in ev.reads:
            last[buffer[tid]] = max(last[buffer[tid]], e)
    for tid in out_ids:
        last[buffer[tid]] = end - 1
    live = [0] * end
    for b in set(buffer):
        for e in range(born[b], last[b] + 1):
            live[e] += rec.tensor_bytes[b]
    peak = [0] * len(groups)
    for e, g in enumerate(group_of):
        peak[g] = max(peak[g], live[e])
    specs = [
        dataclasses.replace(grp["spec"], live_bytes=p) for grp, p in zip(groups, peak, strict=True)
    ]
    return [s.with_dtype(dtype) for s in specs] if dtype != "fp32" else specs


def record_ops(
    module_or_factory: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    recorder: OpRecorder,
) -> list[Any]:
    """Run a module once on a meta input of `input_shape` (no batch dimension) under
    `recorder`; returns the module's outputs as a list.

    A factory builds the module on the meta device, so not even its weights are allocated; a
    module instance runs with meta stand-ins for its weights and is left as it was (its
    training mode included). Batch size 1, eval mode.
    """
    x = torch.empty((1, *input_shape), device="meta")
    if isinstance(module_or_factory, nn.Module):
        # a user's module keeps its weights: run it with meta stand-ins swapped in
        module = module_or_factory
        stand_ins = {
            name: torch.empty_like(t, device="meta")
            for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
        }
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), recorder:
                recorder.new_tensor(x)
                out = torch.func.functional_call(module, stand_ins, (x,))
        finally:
            module.train(was_training)
    else:
        with torch.device("meta"):
            module = module_or_factory()
        module.eval()
        with torch.no_grad(), recorder:
            recorder.new_tensor(x)
            out = module(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def trace_layer_specs(
    module_or_factory: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    dtype: str = "fp32",
) -> list[LayerSpec]:
    """Layer specs of a module for one input of `input_shape` (no batch dimension).

    Pass a factory (e.g. `lambda: space.build(arch)`) to build the module on the meta device,
    so not even its weights are allocated; a module instance is traced with meta stand-ins for
    its weights and is left as it was. Batch size 1, eval mode.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    rec = OpRecorder()
    outputs = record_ops(module_or_factory, input_shape, rec)
    return fuse_and_price(rec, outputs, dtype)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

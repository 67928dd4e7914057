"""The training-memory model: bytes an update plan needs on the device, per layer and in total,
predicted from the network's per-op layer specs (TinyTL, Cai et al., NeurIPS 2020; MCUNetV3's
compile-time training graph, Lin et al., NeurIPS 2022).

The network runs once on the meta device (shapes only) under the layer-spec recorder of
`nas.core.layers`, at the training batch. From that record the model replays one training step
as a compiled training program runs it: the forward pass, the loss, then the backward pass in
reverse. A tensor lives from the op that writes it to its last reader, or, when the backward
pass needs it, to the backward of the op that keeps it; only what the trainable parts need is
kept (a frozen prefix keeps nothing; a frozen convolution still keeps its input while gradients
flow through it, because the runtime's ``convolution_backward`` takes it; a frozen batch norm
keeps nothing). Gradients of activations live from the backward of their last reader to the
backward of their writer; weight gradients, the program's outputs, to the end. The peak of the
sum over live tensors is the plan's buffer; trainable weights and optimizer state come on top;
frozen weights stay in flash unless asked for.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas.backends import pack_offsets
from nas.core.layers import DTYPE_BYTES, OpRecorder
from nas.ondevice.plans import MODES, OPTIONAL_MODES, UpdatePlan, blocks, make_plan
from nas.ondevice.program_spans import SUBSTEPS, program_spans, trained_linear_weights
from nas.ondevice.residual import add_lite_residuals

__all__ = [
    "OPTIMIZERS",
    "LayerMemory",
    "OpTrace",
    "TrainingMemory",
    "record_training_ops",
    "training_memory",
    "training_memory_metric",
]

# optimizer -> state tensors per trainable weight
OPTIMIZERS: dict[str, int] = {"sgd": 0, "sgd_momentum": 1, "adam": 2}

# activations whose backward reads their output (the rest read their input)
_READS_OUTPUT = {"relu", "sigmoid", "tanh"}
# ops whose backward reads no activation at all
# (an average pool's backward kernel takes its input: it is kept)
_NO_SAVE = {"add", "global_avgpool", "concat", "copy", "sub", "view", "flatten"}


@dataclass
class _Op:
    module: str  # the innermost module running when the op ran
    op: str
    activation: str
    reads: list[int]
    writes: int
    params: list[str] = field(default_factory=list)
    in_place: bool = False


class _Recorder(OpRecorder):
    """The layer-spec recorder, noting also the running module and the parameters each op reads."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self.stack: list[str] = [""]
        self._params: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {
            id(p): (weakref.ref(p), n) for n, p in module.named_parameters()
        }

    def _param(self, t: Any) -> str | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._params.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        n_events = len(self.events)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        params = [name for a in args if (name := self._param(a)) is not None]
        if len(self.events) > n_events:
            ev = self.events[-1]
            self.ops.append(
                _Op(
                    self.stack[-1],
                    ev.spec.op,
                    ev.spec.activation,
                    ev.reads,
                    ev.writes,
                    params,
                    ev.in_place,
                )
            )
        elif params and isinstance(out, torch.Tensor):
            # a view of a weight (a linear layer's transpose) still stands for that weight
            self._params[id(out)] = (weakref.ref(out), params[0])
        return out


@dataclass(frozen=True)
class OpTrace:
    """One recorded forward pass: the ops, the outputs' dataflow ids, parameter sizes."""

    recorder: _Recorder
    out_ids: list[int]
    numels: dict[str, int]
    batch: int


def record_training_ops(
    factory: Callable[[], nn.Module], input_shape: Sequence[int], batch: int
) -> OpTrace:
    """Run the module built by `factory` on the meta device at `batch` and record its ops."""
    with torch.device("meta"):
        module = factory()
    if not all(p.is_meta for p in module.parameters()):  # a built network: price a meta copy
        module = copy.deepcopy(module).to("meta")
    module.eval()
    rec = _Recorder(module)
    hooks = []

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        rec.stack.pop()  # a forward hook that returned a value would replace the output

    for name, sub in module.named_modules():
        hooks.append(sub.register_forward_pre_hook(lambda m, a, n=name: rec.stack.append(n)))
        hooks.append(sub.register_forward_hook(leave))
    x = torch.empty((batch, *input_shape), device="meta")
    try:
        with torch.no_grad(), rec:
            rec.new_tensor(x)
            out = module(x)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (list, tuple)) else [out]
    out_ids = [i for t in outs if (i := rec.tensor_id(t)) is not None]
    numels = {n: p.numel() for n, p in module.named_parameters()}
    return OpTrace(rec, out_ids, numels, batch)


@dataclass(frozen=True)
class LayerMemory:
    """One layer's share: its weights, their gradients, the activations its backward keeps."""

    name: str
    op: str
    trainable_bytes: int
    frozen_bytes: int
    saved_bytes: int


@dataclass(frozen=True)
class TrainingMemory:
    """What one training step of a plan needs, in bytes, at `batch` and `dtype`.

    ``plan_bytes`` is the step's planned buffer (input, trainable weights, activations, kept
    tensors, gradients of activations and weights) laid out as the training program's export lays it out
    (`nas.backends.pack_offsets`); ``peak_bytes`` the
    most of it alive at once (what a perfect planner would need); ``total_bytes`` adds the
    optimizer state, and frozen weights when ``count_frozen`` (the trainable weights are in the
    plan: the training program takes them as planned inputs).
    """

    layers: tuple[LayerMemory, ...]
    plan_bytes: int
    peak_bytes: int
    saved_bytes: int
    trainable_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    frozen_bytes: int
    batch: int
    dtype: str
    optimizer: str
    count_frozen: bool
    #: the most alive at once in the backward pass (after the loss)
    backward_peak_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        frozen = self.frozen_bytes if self.count_frozen else 0
        return self.plan_bytes + self.optimizer_bytes + frozen

    def settings(self) -> str:
        """The settings every table states."""
        where = "counted" if self.count_frozen else "in flash, not counted"
        return (
            f"batch {self.batch}, {self.dtype}, optimizer {self.optimizer}, frozen weights {where}"
        )


def _requires_grad(ops: list[_Op], plan: UpdatePlan, n_tensors: int) -> tuple[list[bool], ...]:
    """Which dataflow tensors carry a gradient, and which ops run a backward."""
    t_rg = [False] * n_tensors
    op_rg = []
    for op in ops:
        rg = any(plan.trains(p) for p in op.params) or any(t_rg[r] for r in op.reads)
        t_rg[op.writes] = rg
        op_rg.append(rg)
    return t_rg, op_rg


def _kept(op: _Op, plan: UpdatePlan, t_rg: list[bool]) -> list[int]:
    """The dataflow tensors the backward of `op` reads."""
    if op.op == "conv":
        return op.reads[:1]
    if op.op == "linear":
        return (
            op.reads[:1] if any(plan.trains(p) for p in op.params if p.endswith("weight")) else []
        )
    if op.op == "bn":
        return (
            op.reads[:1] if any(plan.trains(p) for p in op.params if p.endswith("weight")) else []
        )
    if op.op == "act":
        return [op.writes] if op.activation in _READS_OUTPUT else op.reads[:1]
    if op.op == "mul":  # each factor's gradient needs the other factor
        return [
            op.reads[1 - i]
            for i in range(len(op.reads[:2]))
            if len(op.reads) == 2 and t_rg[op.reads[i]]
        ]
    if op.op in _NO_SAVE:
        return []
    return list(op.reads)


def _backward_scratch(
    ops: list[_Op], plan: UpdatePlan, op_rg: list[bool], nbytes: list[int], n: int
) -> list[tuple[int, int, int]]:
    """Scratch tensors alive inside one op's backward, beside its gradients in and out: a
    trained batch norm's centred input and product. A ReLU's backward needs none here: the
    program copies its kept output twice (``alias_copy``), frees the output, makes the mask
    (``le``), then the gradient (``where``), so its peak is the gradient in plus two copies of
    the output, which is what the gradient in, the gradient out and the kept output already
    price; the mask is never alive beside all three."""
    spans = []
    for e, op in enumerate(ops):
        if (
            op_rg[e]
            and op.op == "bn"
            and any(plan.trains(p) for p in op.params if p.endswith("weight"))
        ):
            spans.append((2 * n - e, 2 * n - e, nbytes[op.writes]))
    return spans


def _peak(spans: list[tuple[int, int, int]], length: int, after: int = -1) -> int:
    """The most bytes alive at once, over times after `after`."""
    live = [0] * (length + 2)
    for start, end, size in spans:
        live[start] += size
        live[min(end, length) + 1] -= size
    peak = running = 0
    for t, delta in enumerate(live):
        running += delta
        if t > after:
            peak = max(peak, running)
    return peak


def _activation_spans(
    ops: list[_Op],
    plan: UpdatePlan,
    t_rg: list[bool],
    op_rg: list[bool],
    out_ids: list[int],
    nbytes: list[int],
) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """(start, end, bytes) of every activation and activation gradient, and which op keeps each
    kept tensor (forward op e runs at time e, the loss at n, the backward of op e at 2n - e)."""
    n = len(ops)
    end_time = 2 * n + 1
    writer = {op.writes: e for e, op in enumerate(ops)}
    last_read = {tid: 0 for tid in range(len(nbytes))}
    grad_from: dict[int, int] = {}  # tensor -> when its gradient is first made
    saver: dict[int, int] = {}  # kept tensor -> the op that first keeps it
    kept_until: dict[int, int] = {}
    for e, op in enumerate(ops):
        for r in op.reads:
            last_read[r] = max(last_read[r], e)
            if op_rg[e] and t_rg[r]:
                grad_from[r] = min(grad_from.get(r, end_time), 2 * n - e)
        if op_rg[e]:
            for k in _kept(op, plan, t_rg):
                kept_until[k] = max(kept_until.get(k, 0), 2 * n - e)
                saver.setdefault(k, e)
    for out in out_ids:
        last_read[out] = n
        if t_rg[out]:
            grad_from[out] = n

    spans = _backward_scratch(ops, plan, op_rg, nbytes, n)
    for tid, size in enumerate(nbytes):
        start = writer.get(tid, 0)
        spans.append((start, max(last_read[tid], kept_until.get(tid, 0), start), size))
        if tid in grad_from and tid in writer:
            spans.append((grad_from[tid], 2 * n - writer[tid], size))
    return spans, saver


def training_memory(
    factory: Callable[[], nn.Module],
    input_shape: Sequence[int],
    plan: UpdatePlan,
    batch: int = 8,
    dtype: str = "fp32",
    optimizer: str = "sgd",
    count_frozen: bool = False,
    num_classes: int | None = None,
    trace: OpTrace | None = None,
) -> TrainingMemory:
    """The training memory of `plan` for the module `factory` builds (see the module docstring).

    `factory` builds the module (on the meta device: nothing is allocated); `input_shape` has no
    batch dimension. Labels (int64) and the loss's softmax are counted for a classifier. A
    `trace` from :func:`record_training_ops` at the same batch saves recording again (the plan
    search prices many plans of one network).
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if trace is None or trace.batch != batch:
        trace = record_training_ops(factory, input_shape, batch)
    rec, out_ids, numels = trace.recorder, trace.out_ids, trace.numels
    scale = DTYPE_BYTES[dtype] / 4  # the record is in fp32
    nbytes = [int(b * scale) for b in rec.tensor_bytes]
    ops, n = rec.ops, len(rec.ops)
    t_rg, op_rg = _requires_grad(ops, plan, len(nbytes))
    end_time = 2 * n + 1  # forward 0..n-1, the loss at n, the backward of op e at 2n - e

    spans, saver = _activation_spans(ops, plan, t_rg, op_rg, out_ids, nbytes)
    elem = DTYPE_BYTES[dtype]
    trainable = {p for p in numels if plan.trains(p)}
    grad_bytes = sum(numels[p] * elem for p in trainable)
    # weight gradients are the program's outputs: made at their layer's backward, kept to the end
    # (a linear layer's in `program_spans`, with the transposes that make it)
    first_bwd: dict[str, int] = {}
    for e, op in enumerate(ops):
        for p in op.params:
            if p in trainable:
                first_bwd.setdefault(p, 2 * n - e)
    linear = trained_linear_weights(ops, plan.trains)
    spans += [(first_bwd.get(p, n), end_time, numels[p] * elem) for p in trainable - linear]
    # trainable weights are the program's planned inputs (frozen ones are its constants), alive
    # the whole step: they sit in the planned buffer, not beside it
    spans += [(0, end_time, numels[p] * elem) for p in trainable]
    if num_classes:
        logits = sum(nbytes[o] for o in out_ids)  # the network's own classes
        # softmax and its gradient, in the loss's slot only; the labels
        spans += [(n, n, 2 * logits), (0, end_time, batch * 8)]
    # each op's slot split in sub-steps, for the tensors only the compiled program makes
    k = SUBSTEPS
    spans = [(k * s, k * e + k - 1, size) for s, e, size in spans]
    spans += program_spans(
        ops, plan.trains, t_rg, op_rg, nbytes, numels, elem, end=k * end_time + k - 1
    )

    plan_bytes = pack_offsets(spans)[1]  # the packing the training program's export uses
    peak_bytes = _peak(spans, k * end_time + k - 1)
    layers = _layer_table(ops, plan, numels, nbytes, saver, elem)
    return TrainingMemory(
        layers=layers,
        plan_bytes=plan_bytes,
        peak_bytes=peak_bytes,
        saved_bytes=sum(nbytes[k] for k in saver),
        trainable_bytes=grad_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=OPTIMIZERS[optimizer] * grad_bytes,
        frozen_bytes=sum(numels[p] * elem for p in numels if p not in trainable),
        batch=batch,
        dtype=dtype,
        optimizer=optimizer,
        count_frozen=count_frozen,
        backward_peak_bytes=_peak(spans, k * end_time + k - 1, after=k * n + k - 1),
    )


def _layer_table(
    ops: list[_Op],
    plan: UpdatePlan,
    numels: dict[str, int],
    nbytes: list[int],
    saver: dict[int, int],
    elem: int,
) -> tuple[LayerMemory, ...]:
    """One row per op that holds weights or keeps an activation, in forward order."""
    kept_by: dict[int, int] = {}
    for tid, e in saver.items():
        kept_by[e] = kept_by.get(e, 0) + nbytes[tid]
    rows = []
    for e, op in enumerate(ops):
        params = [p for p in op.params if p in numels]
        if not params and e not in kept_by:
            continue
        train = sum(numels[p] * elem for p in params if plan.trains(p))
        frozen = sum(numels[p] * elem for p in params if not plan.trains(p))
        rows.append(LayerMemory(op.module, op.op, train, frozen, kept_by.get(e, 0)))
    return tuple(rows)


def training_memory_metric(
    space: Any,
    mode: str = "bias",
    batch: int = 8,
    blocks_k: int = 1,
    count_frozen: bool = False,
) -> Callable[[Sequence[Any]], list[int]]:
    """``archs -> training memory in bytes`` under plan `mode` at `batch`: a free objective or
    budget for a search ("archs that can learn on the device within 256 KB"). Each arch is built
    once on the meta device (shapes only: no weights, no export) and cached by key.

    `mode` is a fixed mode of :data:`~nas.ondevice.plans.MODES`; ``sparse`` is not one (its
    layers are chosen per arch by a probe on data under a budget). ``last`` trains the last
    `blocks_k` blocks, or every block of an arch that has fewer; ``lite_residual`` prices the
    arch with TinyTL's branches added (`nas.ondevice.residual`).
    """
    fixed = [m for m in (*MODES, *OPTIONAL_MODES) if m != "sparse"]
    if mode not in fixed:
        raise ValueError(
            f"training memory is priced for a fixed mode, one of {fixed}; got {mode!r}"
        )
    if batch < 1 or blocks_k < 1:
        raise ValueError(f"batch and blocks are >= 1, got batch {batch}, blocks {blocks_k}")
    cache: dict[str, int] = {}
    classes = getattr(space, "num_classes", None)

    def price(arch: Any) -> int:
        key = space.key(arch)
        if key not in cache:
            arch = space.validate(arch)
            with torch.device("meta"):
                module = space.build(arch)
            if mode == "lite_residual":
                module = add_lite_residuals(module, space.input_shape(arch))
            plan = make_plan(module, mode, blocks_k=min(blocks_k, len(blocks(module))))
            cache[key] = training_memory(
                lambda: module,
                space.input_shape(arch),
                plan,
                batch=batch,
                count_frozen=count_frozen,
                num_classes=classes,
            ).total_bytes
        return cache[key]

    return lambda archs: [price(a) for a in archs]

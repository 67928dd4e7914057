"""The layers a runtime actually executes: an arch's specs after dead-branch elimination.

A graph compiler folds an operation that multiplies by a constant zero (NAS-Bench-201's `none`
edge, `x.mul(0.0)`) into a constant, turns `y + 0` into `y`, and drops every op whose result no
longer reaches the network output. Whether a runtime does this is a property of the device
(`removes_dead_branches` in a profile); what is left is found here by tracing with the same
recorder and fusion rules as `nas.core.layers.trace_layer_specs`, pruning the recorded dataflow
before fusion. Ops that merely *read* a zero (a conv of a zero node) are kept: a compiler does
not know a computed tensor is zero, and the measured NAS-Bench-201 latencies agree (see
benchmarks/latency_nb201.py).

Only archs whose specs hold a multiplication are re-traced (others are returned as the space
gives them). Pruning reuses the space's block decomposition (`SearchSpace.traced_block`) so an
arch costs a few dictionary look-ups once its blocks have been seen; a space without block specs
is traced whole. Dead code is found inside each block: a block's output always counts as used,
except that a block whose output is a constant folds the whole chain of blocks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from torch import nn

# This module extends the tracer's recorder (zero-operand bookkeeping) instead of copying it,
# so the way a module is run, recorded and fused stays one thing (nas.core.layers).
from nas.core.layers import DTYPE_BYTES, LayerSpec, OpRecorder, fuse_and_price, record_ops
from nas.core.space import SearchSpace

__all__ = ["RuntimeSpecs", "has_zero_ops", "pruned_layer_specs"]

_ZERO_PRODUCERS = {"mul", "mul_"}
_PASS_ZERO = {"add", "add_", "sub", "sub_"}


def _is_zero_scalar(a: object) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and a == 0


class _PruningRecorder(OpRecorder):
    """The tracer's recorder, also noting which ops multiply by a literal zero."""

    def __init__(self) -> None:
        super().__init__()
        self.zero_mul: list[bool] = []
        self.names: list[str] = []
        self.alias: dict[int, int] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        before = len(self.events)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.events) > before:
            name = func.overloadpacket.__name__
            self.names.append(name)
            self.zero_mul.append(
                name in _ZERO_PRODUCERS and any(_is_zero_scalar(a) for a in args[1:])
            )
        return out

    def tensor_id(self, t: Any) -> int | None:
        tid = super().tensor_id(t)
        while tid is not None and tid in self.alias:
            tid = self.alias[tid]
        return tid


def _prune(rec: _PruningRecorder, outputs: Sequence[Any]) -> bool:
    """Fold zero products, drop `+ 0`, then keep only events whose results reach an output.

    Returns whether the output is a constant (does not depend on the input): a compiler then
    folds the whole network, and nothing is left to run.
    """
    zero: set[int] = set()
    kept: list[int] = []
    written = {ev.writes for ev in rec.events}
    # constant = computed from nothing that depends on the input (weights are not tracked)
    varying = {t for t in range(len(rec.tensor_bytes)) if t not in written}
    for e, ev in enumerate(rec.events):
        reads = [rec.alias.get(r, r) for r in ev.reads]
        ev.reads = reads
        name = rec.names[e]
        if rec.zero_mul[e] or (name in _ZERO_PRODUCERS and any(r in zero for r in reads)):
            zero.add(ev.writes)
            continue
        if name in _PASS_ZERO and reads and any(r in zero for r in reads):
            live = [r for r in reads if r not in zero]
            if not live:
                zero.add(ev.writes)
                continue
            if len(live) == 1 and len(reads) == 2 and name.startswith("add"):
                rec.alias[ev.writes] = live[0]
                continue
        if any(r in varying for r in reads):
            varying.add(ev.writes)
        kept.append(e)
    out_ids = {i for t in outputs if (i := rec.tensor_id(t)) is not None}
    if out_ids and not out_ids & varying:
        rec.events, rec.names, rec.zero_mul = [], [], []
        return True
    # Backwards from the outputs: an event is live when something live reads what it writes.
    needed = set(out_ids)
    live_events: list[int] = []
    for e in reversed(kept):
        ev = rec.events[e]
        if ev.writes in needed:
            live_events.append(e)
            needed.update(ev.reads)
            if ev.in_place:
                needed.update(ev.reads[:1])
    keep = sorted(live_events)
    rec.events = [rec.events[e] for e in keep]
    rec.names = [rec.names[e] for e in keep]
    rec.zero_mul = [rec.zero_mul[e] for e in keep]
    return False


def pruned_layer_specs(
    module_or_factory: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    dtype: str = "fp32",
) -> list[LayerSpec]:
    """`nas.core.layers.trace_layer_specs` after dead-branch elimination (module docstring).

    Without zero products or unused results this returns exactly what the tracer returns; a
    module whose output does not depend on its input at all is folded whole: no specs.
    """
    return _pruned(module_or_factory, input_shape, dtype)[0]


def _pruned(
    module_or_factory: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    dtype: str = "fp32",
) -> tuple[list[LayerSpec], bool]:
    """(specs, whether the output is a constant)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    rec = _PruningRecorder()
    outputs = record_ops(module_or_factory, input_shape, rec)
    if _prune(rec, outputs):
        return [], True
    return fuse_and_price(rec, outputs, dtype), False


def has_zero_ops(specs: Sequence[LayerSpec]) -> bool:
    """Whether any spec could be a zero product (only then can pruning change anything)."""
    return any(s.op in ("mul",) for s in specs)


class _BlockView:
    """Stands in for a space inside its own `block_specs`, pruning each traced block.

    Everything but `traced_block` is the space's own attribute.
    """

    def __init__(self, space: SearchSpace, cache: dict[tuple[Hashable, tuple[int, ...]], Any]):
        self._space = space
        self._cache = cache
        self.calls = 0
        self.constant = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space, name)

    def traced_block(
        self,
        block_key: Hashable,
        factory: Callable[[], nn.Module],
        input_shape: Sequence[int],
    ) -> list[LayerSpec]:
        self.calls += 1
        key = (block_key, tuple(int(s) for s in input_shape))
        entry = self._cache.get(key)
        if entry is None:
            entry = _pruned(factory, input_shape)
            self._cache[key] = entry
        specs, constant = entry
        if constant:
            # a block folded to a constant: in a chain of blocks, everything after it computes
            # a constant and everything before it feeds nothing
            self.constant = True
            # keep the chain's shapes flowing for the space's own composition code
            return self._space.traced_block(block_key, factory, input_shape)
        return list(specs)


class RuntimeSpecs:
    """Layer specs as a runtime that removes dead branches executes them, cached per arch.

    One instance serves any number of spaces (caches are kept per space object).
    """

    def __init__(self) -> None:
        self._blocks: weakref.WeakKeyDictionary[SearchSpace, dict[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._archs: weakref.WeakKeyDictionary[SearchSpace, dict[str, list[LayerSpec]]] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> list[LayerSpec]:
        a = space.validate(arch)
        cache = self._archs.setdefault(space, {})
        key = f"{space.key(a)}#{dtype}"
        specs = cache.get(key)
        if specs is None:
            specs = self._fp32(space, a)
            if dtype != "fp32":
                specs = [s.with_dtype(dtype) for s in specs]
            cache[key] = specs
        return specs

    def _fp32(self, space: SearchSpace, arch: Mapping[str, Any]) -> list[LayerSpec]:
        plain = space.layer_specs(arch)  # cached by the space
        if not has_zero_ops(plain):
            # Nothing multiplies by zero: nothing to fold. (A network that computes results it
            # never uses would still be priced whole: modules rarely do.)
            return plain
        if type(space).block_specs is SearchSpace.block_specs:  # no block decomposition
            return self._whole(space, arch)
        view = _BlockView(space, self._blocks.setdefault(space, {}))
        try:
            # The space's own composition, run with `view` as self: same code, pruned blocks.
            blocks = type(space).block_specs(view, arch)  # type: ignore[arg-type]
        except TypeError:  # e.g. a block_specs that calls super(): trace the whole network
            blocks = None
        if blocks is None:
            return self._whole(space, arch)
        if view.constant:
            return []
        if view.calls == 0 and has_zero_ops(blocks):
            # specs written by hand, not traced: only a whole trace can see the dataflow
            return self._whole(space, arch)
        return blocks

    @staticmethod
    def _whole(space: SearchSpace, arch: Mapping[str, Any]) -> list[LayerSpec]:
        return pruned_layer_specs(lambda: space.build(arch), space.input_shape(arch))

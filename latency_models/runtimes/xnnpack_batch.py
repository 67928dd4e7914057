"""XNNPACK's batched LUT builds: many independent layers lowered as one ExecuTorch program, one
delegate per layer, and each layer's time read from the event tracer.

Why batch (``measure_many``). Lowering costs a fixed ~0.5-1 s per program (mostly
``run_decompositions`` inside ``to_edge``: ~80 % of lowering one conv) plus a cost per graph
node for every pass (FX interpreters, fake tensors), and int8 adds PT2E's fixed pattern export
(~3-6 s per ``prepare_pt2e``) and histogram-observer calibration. Layer by layer, a conv costs
~1-2 s and an MBConv block ~2 s fp32, ~4-6 s int8. Here many layers become one program: layer i
reads input i and writes output i, a partitioner gives every layer its own XNNPACK delegate, the
program is lowered once (fixed costs paid once per ``batch_layers``), and the method runs with
ExecuTorch's event tracer (ETDump) on. Each run records one ``DELEGATE_CALL`` event per layer
with its own start and end time: those are the per-layer samples, fed to
:func:`latency_models.measure.measure_rounds`. A layer that does not lower to exactly one
delegate (an op XNNPACK does not take) is timed on its own instead, as is a whole batch that
fails to lower.

What a batched time means. A delegate call covers the layer's kernels and its NCHW<->NHWC
layout changes but not the Python binding; measured here, a one-layer program timed by ETDump
and by wall clock agree within ~2 %. In the batched program a layer runs after the others, so
its weights and input are not in cache the way they are when one layer runs back to back: on
ten MobileNet-style layers the batched p10 was 1.05x the per-layer one (fp32; rank correlation
1.00; worst 1.4x, a 28 us layer) and 1.29x for int8 (rank correlation 0.96; tiny int8 layers,
10-30 us, up to 4x). That is closer to how a layer runs inside a network, but it is a
different quantity from the classic back-to-back LUT entry: ``batched=False`` gives that one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["XnnpackBatch", "delegate_times_ms"]


@dataclass
class XnnpackBatch:
    """Many layers lowered into one program, one delegate per layer (see the module doc)."""

    device: str
    dtype: str
    input_shapes: list[tuple[int, ...]]
    examples: list[torch.Tensor]
    pte: bytes
    delegate_layers: list[int]
    """Layer index of each delegate call, in execution order."""
    unbatched: list[int]
    """Layers that did not lower to exactly one delegate: time them alone."""
    artifact_path: Path | None = None
    cache_hit: bool = False
    build_s: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """Hide executorch/torch deprecation chatter about their own internals (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="read_binary")
        yield


def _branch_partitioner() -> Any:
    """XnnpackPartitioner whose partitions never span two independent branches of the graph."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.partitioner import PartitionResult

    class BranchPartitioner(XnnpackPartitioner):
        def partition(self, exported_program: Any) -> Any:
            result = super().partition(exported_program)
            branch = _branch_of_nodes(exported_program)
            tags = {}
            for node in exported_program.graph_module.graph.nodes:
                tag = node.meta.get("delegation_tag")
                if tag is None:
                    continue
                owners = branch[node]
                if not owners:
                    # Not reachable from any input nor used by any layer: leave it out.
                    del node.meta["delegation_tag"]
                    continue
                # A constant shared by several layers goes with the first; the partitioning
                # infrastructure copies constant data into every partition that uses it.
                new_tag = f"{tag}_layer{min(owners)}"
                node.meta["delegation_tag"] = new_tag
                tags[new_tag] = self.delegation_spec
            return PartitionResult(
                tagged_exported_program=result.tagged_exported_program, partition_tags=tags
            )

    return BranchPartitioner()


def _branch_of_nodes(ep: Any) -> dict[Any, set[int]]:
    """For every node, the layers (user-input indices) it belongs to.

    A node belongs to the layers whose input it depends on; a node that depends on no input
    (a weight, its scale, a dequantize of a weight) belongs to the layers that use it.
    """
    user_inputs = list(ep.graph_signature.user_inputs)
    nodes = list(ep.graph_module.graph.nodes)
    owner: dict[Any, set[int]] = {}
    for node in nodes:
        if node.op == "placeholder":
            owner[node] = {user_inputs.index(node.name)} if node.name in user_inputs else set()
        else:
            owner[node] = set().union(*(owner[a] for a in node.all_input_nodes))
    for node in reversed(nodes):  # users come later in topological order
        if not owner[node]:
            owner[node] = set().union(*(owner[u] for u in node.users))
    return owner


def _delegate_layers(graph_module: Any, n_layers: int) -> tuple[list[int], list[int]]:
    """(layer of each delegate call in order, layers not lowered to exactly one delegate)."""
    user_inputs = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    owner: dict[Any, set[int]] = {}
    input_index = {n: i for i, n in enumerate(user_inputs[-n_layers:])}
    calls: list[int] = []
    bad: set[int] = set()
    per_layer = [0] * n_layers
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            owner[node] = {input_index[node]} if node in input_index else set()
            continue
        owner[node] = set().union(*(owner[a] for a in node.all_input_nodes))
        if node.op != "call_function" or getattr(node.target, "__name__", "") == "getitem":
            continue
        layers = owner[node]
        if getattr(node.target, "__name__", "") == "executorch_call_delegate" and len(layers) == 1:
            (layer,) = layers
            calls.append(layer)
            per_layer[layer] += 1
        else:
            bad |= layers
    bad |= {i for i, count in enumerate(per_layer) if count != 1}
    return calls, sorted(bad)


def delegate_times_ms(etdump: bytes) -> np.ndarray:
    """``DELEGATE_CALL`` durations (ms) from an ETDump: one row per run, columns in call order."""
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    rows = []
    with _quiet_third_party():
        runs = deserialize_from_etdump_flatcc(etdump).run_data
    for run in runs:
        calls = [
            (
                ev.profile_event.instruction_id,
                ev.profile_event.end_time - ev.profile_event.start_time,
            )
            for ev in run.events or []
            if ev.profile_event is not None and ev.profile_event.name == "DELEGATE_CALL"
        ]
        if calls:
            rows.append([duration for _, duration in sorted(calls)])
    if not rows or len({len(r) for r in rows}) != 1:
        raise RuntimeError(
            "ETDump must hold the same number of DELEGATE_CALL events in every run; got "
            f"{sorted({len(r) for r in rows})} (is the event tracer built into executorch?)"
        )
    # The pybindings' event tracer stamps with et_pal_current_ticks(): nanoseconds on Linux.
    return np.asarray(rows, dtype=np.float64) / 1e6

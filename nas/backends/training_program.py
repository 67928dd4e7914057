"""ExecuTorch training programs: export a classifier's forward and backward as one program,
lower what is frozen to XNNPACK, run steps with the runtime's SGD and read the weights back.

Facts this module relies on (executorch 1.5.1, checked by tests/nas/backends/
test_training_program.py): ``torch.export.experimental._export_forward_backward`` exports the
joint graph of a module whose frozen parameters have ``requires_grad`` off, pruning the
backward they do not need; the runtime's memory plan is
``execution_plan[0].non_const_buffer_sizes``; the training module's ``named_parameters()``
point into runtime memory (clone them) and live as long as the loaded program. The plain
XNNPACK partitioner swallows trainable parameters into delegates (the runtime then updates
copies nobody reads); :class:`_FrozenOnlyPartitioner` delegates, op by op, only what touches
no trainable parameter. Batch norm runs in eval mode (training mode has no out variant). The
runtime only reports an operator without a kernel when a step runs, so the export checks the
program's operators against the runtime's registered kernels first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.backends.batch_statistics import with_batch_statistics
from nas.backends.memory_packing import training_memory_planning_pass
from nas.backends.quiet import quiet_exporters

__all__ = [
    "PARTITIONS",
    "RUNTIME_OPTIMIZERS",
    "RuntimeTrainer",
    "TrainingProgram",
    "TrainingProgramError",
    "check_runtime_optimizer",
    "export_training_program",
]

PARTITIONS = ("portable", "xnnpack_frozen")

#: the optimizers the runtime steps with, by the memory model's names: its training extension
#: offers one, ``get_sgd_optimizer`` (with or without momentum); there is no Adam
RUNTIME_OPTIMIZERS = ("sgd", "sgd_momentum")


class TrainingProgramError(RuntimeError):
    """The runtime cannot train this module as asked (an op, an optimizer, a mode)."""


def check_runtime_optimizer(optimizer: str) -> None:
    """Raise :class:`TrainingProgramError` when the runtime has no such optimizer."""
    if optimizer not in RUNTIME_OPTIMIZERS:
        raise TrainingProgramError(
            f"the runtime has no {optimizer!r} optimizer: ExecuTorch's training extension "
            f"offers SGD only (get_sgd_optimizer), as {' or '.join(map(repr, RUNTIME_OPTIMIZERS))}"
        )


class _WithLoss(nn.Module):
    """The module and its cross-entropy loss: the program's one output is the loss."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.loss(self.net(x), y),)


@dataclass(frozen=True)
class TrainingProgram:
    """A serialized training program and what its export found."""

    data: bytes
    plan_bytes: int  # the runtime's planned (non-constant) buffer
    trainable: tuple[str, ...]  # the parameters it trains, as the module names them
    partition: str
    delegated_ops: int
    export_s: float
    live_peak_bytes: int = 0  # the most planned bytes alive at one instruction (no packing)
    backward_peak_bytes: int = 0  # the same, over the instructions after the loss
    #: buffers the program updates (batch norm's running statistics in training mode): the
    #: runtime leaves them out of its outputs, though its gradient and parameter indices count them
    buffer_mutations: int = 0


def _frozen_only_partitioner(trainable: set[str]) -> Any:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class _FrozenOnlyPartitioner(XnnpackPartitioner):
        """XNNPACK, op by op, for the ops that read no trainable parameter."""

        def __init__(self) -> None:
            super().__init__(per_op_mode=True)

        def generate_partitions(self, ep: Any) -> list[Any]:
            sig = ep.graph_signature
            trained = {node for node, fqn in sig.inputs_to_parameters.items() if fqn in trainable}

            def touches(node: Any) -> bool:
                names = {node.name} | {a.name for a in node.all_input_nodes}
                return bool(names & trained)

            return [
                p
                for p in super().generate_partitions(ep)
                if not any(touches(node) for node in p.nodes)
            ]

    return _FrozenOnlyPartitioner()


def export_training_program(
    net: nn.Module,
    example: Sequence[torch.Tensor],
    partition: str = "portable",
    batch_norm: str = "eval",
    check_kernels: bool = True,
) -> TrainingProgram:
    """Export `net` (its frozen parameters with ``requires_grad`` off) with a cross-entropy
    loss as an ExecuTorch training program for inputs like `example` (x, y). Batch norm runs
    in eval mode (`net` in eval mode), or with ``batch_norm="train"`` on the batch's statistics
    with its running statistics updated in the runtime, starting from `net`'s. A program with
    an operator the runtime has no kernel for is an error, unless `check_kernels` is off (its
    memory plan is still the program's: for measuring, never for running)."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    if batch_norm not in ("eval", "train"):
        raise ValueError(f"batch_norm must be 'eval' or 'train', got {batch_norm!r}")
    try:
        from executorch.exir import ExecutorchBackendConfig, to_edge, to_edge_transform_and_lower
    except ImportError as err:  # an optional extra: what the runtime cannot do, said so
        raise TrainingProgramError(
            f"ExecuTorch is not installed ({err}): pip install -e '.[executorch]'"
        ) from err
    from torch.export.experimental import _export_forward_backward

    trainable = {f"net.{n}" for n, p in net.named_parameters() if p.requires_grad}
    if not trainable:
        raise TrainingProgramError("nothing to train: every parameter is frozen")
    net, passes = _batch_norm_mode(net, batch_norm)
    start = time.perf_counter()
    with quiet_exporters():
        ep = torch.export.export(_WithLoss(net), tuple(example), strict=False)
        try:
            joint = _export_forward_backward(ep)
            if partition == "portable":
                edge = to_edge(joint)
            else:
                edge = to_edge_transform_and_lower(
                    joint, partitioner=[_frozen_only_partitioner(trainable)]
                )
            # a tight, deterministic plan the memory model replays (nas.backends.memory_packing)
            et = edge.to_executorch(
                ExecutorchBackendConfig(
                    passes=passes, memory_planning_pass=training_memory_planning_pass()
                )
            )
        except Exception as exc:  # the exporters raise many kinds; name the module's part
            raise TrainingProgramError(
                f"the runtime cannot train this module: {type(exc).__name__}: {exc}"
            ) from exc
    missing = _missing_kernels(et) if check_kernels else []
    if missing:
        raise TrainingProgramError(
            f"the runtime has no kernel for {', '.join(missing)}: the program exports but cannot "
            "run; change the module (e.g. an average pool whose input needs a gradient: "
            "avg_pool2d's backward has no kernel) or train it in PyTorch"
        )
    delegated = sum(
        1
        for node in edge.exported_program().graph.nodes
        if node.op == "call_function" and "executorch_call_delegate" in str(node.target)
    )
    sizes = list(et.executorch_program.execution_plan[0].non_const_buffer_sizes)
    live_peak, backward_peak = _live_peaks(et)
    return TrainingProgram(
        buffer_mutations=len(joint.graph_signature.buffers_to_mutate),
        data=et.buffer,
        plan_bytes=int(sum(sizes)),
        trainable=tuple(sorted(n.removeprefix("net.") for n in trainable)),
        partition=partition,
        delegated_ops=delegated,
        export_s=time.perf_counter() - start,
        live_peak_bytes=live_peak,
        backward_peak_bytes=backward_peak,
    )


def _batch_norm_mode(net: nn.Module, batch_norm: str) -> tuple[nn.Module, list[Any]]:
    """The module to export and the passes its batch norm needs (see `export_training_program`)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch_norm == "eval" and any(m.training for m in norms):
        raise TrainingProgramError(
            "batch norm in training mode has no out variant in the runtime "
            "(aten::_native_batch_norm_legit_functional); call net.eval() to freeze its "
            "statistics, or export with batch_norm='train' (BatchNorm2d written out in plain ops)"
        )
    passes: list[Any] = []
    if batch_norm == "train" and norms:
        from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

        try:
            net = with_batch_statistics(net)
        except ValueError as err:
            raise TrainingProgramError(f"batch norm in training mode: {err}") from err
        # running statistics start from the model's, not from zeros
        passes = [InitializedMutableBufferPass(["running_mean", "running_var"])]
    return net, passes


def _live_peaks(et: Any) -> tuple[int, int]:
    """The most bytes of planned tensors alive at one instruction, from the specs' lifetimes
    (what a perfect packing would need: the greedy planner's buffer is at least this), over the
    whole program and over the instructions after the loss (its log-softmax)."""
    nodes = list(et.exported_program().graph.nodes)
    loss = next((i for i, n in enumerate(nodes) if "_log_softmax" in str(n.target)), 0)
    specs: dict[int, Any] = {}
    for node in nodes:
        found = node.meta.get("spec")
        for spec in found if isinstance(found, (list, tuple)) else [found]:
            if getattr(spec, "mem_id", None) is not None and not spec.const and spec.lifetime:
                specs[id(spec)] = spec
    events: dict[int, int] = {}
    for spec in specs.values():
        start, end = spec.lifetime
        events[start] = events.get(start, 0) + spec.allocated_memory
        events[end + 1] = events.get(end + 1, 0) - spec.allocated_memory
    peak = backward = running = 0
    for t in sorted(events):
        running += events[t]
        peak = max(peak, running)
        if t > loss:
            backward = max(backward, running)
    return peak, backward


def _missing_kernels(et: Any) -> list[str]:
    """The program's operators the runtime registers no kernel for (``aten::name.overload``);
    the runtime itself only says so when a step runs (error 0x14)."""
    try:
        from executorch.extension.pybindings.portable_lib import _get_operator_names
    except ImportError:  # pragma: no cover - the runtime checks at load time then
        return []
    have = set(_get_operator_names())
    wanted = [
        f"{op.name}.{op.overload}" if op.overload else op.name
        for plan in et.executorch_program.execution_plan
        for op in plan.operators
    ]
    return [w for w in dict.fromkeys(wanted) if w not in have and w.split(".")[0] not in have]


class RuntimeTrainer:
    """A loaded training program stepped with the runtime's own SGD (no momentum by default)."""

    def __init__(self, program: TrainingProgram, lr: float, momentum: float = 0.0) -> None:
        from executorch.extension.training import (
            _load_for_executorch_for_training_from_buffer,
            get_sgd_optimizer,
        )

        self.program = program
        self._data = program.data  # the runtime's tensors point into what this buffer loads
        self._module = _load_for_executorch_for_training_from_buffer(self._data)
        self._lr, self._momentum = lr, momentum
        self._optimizer: Any = None
        self._get_sgd = get_sgd_optimizer

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One forward, backward and SGD step in the runtime; returns the loss before it."""
        if self.program.buffer_mutations:
            loss = self._step_with_buffers(x, y)
        else:
            loss = float(self._module.forward_backward("forward", (x, y))[0])
        if self._optimizer is None:
            params = self._module.named_parameters()
            self._optimizer = self._get_sgd(params, self._lr, self._momentum, 0, 0, False)
        self._optimizer.step(self._module.named_gradients())
        return loss

    def _step_with_buffers(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """`forward_backward` for a program that updates buffers: the runtime's outputs leave
        the updated buffers out, so its gradient and parameter indices are shifted back."""
        module = self._module
        shift = self.program.buffer_mutations
        grads_at = module.model.run_method(module.gradients_method_prefix + "forward", ())[0]
        params_at = module.model.run_method(module.parameters_method_prefix + "forward", ())[0]
        out = module.model.run_method("forward", (x, y), clone_outputs=False)
        names = module.model.run_method(module.fqn_method_prefix + "forward", ())
        grads = out[grads_at - shift : params_at - shift]
        module.named_grads = dict(zip(names, [g.clone() for g in grads], strict=True))
        if module.named_params is None:
            module.named_params = dict(zip(names, out[params_at - shift :], strict=True))
        return float(out[0])

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The trained weights (copies), named as in the module (no ``net.`` prefix)."""
        if self._optimizer is None:
            raise TrainingProgramError("run a step first: the runtime names its weights then")
        return {
            n.removeprefix("net."): t.clone() for n, t in self._module.named_parameters().items()
        }

    def load_into(self, net: nn.Module) -> None:
        """Copy the trained weights into `net` (the module the program was exported from)."""
        trained = self.named_parameters()
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)

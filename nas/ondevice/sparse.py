"""Sparse update under a byte budget: pick the layers whose update pays most per byte of
training memory it adds, by a short measured probe of each layer's gain on the adaptation shots
(MCUNetV3, "On-device training under 256 KB memory", Lin et al., NeurIPS 2022).

Each candidate layer is fine-tuned alone for a few steps on one half of the shots; its gain is
the drop of the loss on the other half. Its cost is the modelled training memory of updating
it alone, over the floor every plan pays (the forward pass at the batch). Layers join the plan
by gain per byte, each only if the plan with it still fits the
budget in the memory model; layers with no gain never join. Only the shots are ever seen.
With ``check_program`` the chosen plan is exported and, while the training program's own plan
(plus optimizer state) is over the budget, the layer that joined last leaves; the plan says
which check it passed (``budget_check``: "model" or "program").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from nas.backends import export_training_program
from nas.ondevice.memory import OpTrace, TrainingMemory, record_training_ops, training_memory
from nas.ondevice.plans import UpdatePlan, make_plan, parameter_layers
from nas.supernet import execution, fits_memory

__all__ = [
    "BUDGET_MARGIN",
    "BudgetTooSmallError",
    "LayerProbe",
    "plan_under_budget",
    "probe_layers",
    "step_down_in_program",
]

#: a plan fits a budget when its modelled bytes times 1 + this do (see `plan_under_budget`):
#: the model replays the training program's own packing (`nas.backends.pack_offsets`) and has
#: matched its plan within 0.01 % on `tiny`; the margin covers what a layer spec cannot see
BUDGET_MARGIN = 0.02


class BudgetTooSmallError(ValueError):
    """No plan fits the budget; `smallest_bytes` is what the cheapest one needs."""

    def __init__(
        self,
        budget_bytes: int,
        smallest_bytes: int,
        batch: int,
        asked: tuple[str, int] | None = None,
    ) -> None:
        self.budget_bytes, self.smallest_bytes = budget_bytes, smallest_bytes
        head = f"no update plan fits {budget_bytes / 1024:.1f} KB at batch {batch}"
        if asked is not None and smallest_bytes <= budget_bytes:
            head = (
                f"plan {asked[0]!r} needs {asked[1] / 1024:.1f} KB, over the budget of "
                f"{budget_bytes / 1024:.1f} KB at batch {batch}; pick a smaller mode or 'sparse'"
            )
        super().__init__(
            f"{head}: the smallest plan needs {smallest_bytes / 1024:.1f} KB (--budget-kb "
            f"of at least {-(-smallest_bytes // 1024)}, or a lower batch)"
        )


@dataclass(frozen=True)
class LayerProbe:
    """One candidate layer: its measured gain (loss drop on held-out shots), its cost (the
    training memory of updating it alone) and the floor every plan pays (the forward pass's own
    memory at the batch, a plan that trains nothing): its gain per KB is per KB over the floor,
    the update's own cost, as MCUNetV3 ranks (per total byte, the floor, 94 % of a sixth of
    full fine-tuning on the largest `tiny` arch, left the ranking to the gain alone)."""

    layer: str
    gain: float
    cost_bytes: int
    floor_bytes: int = 0

    @property
    def gain_per_kb(self) -> float:
        return 1024.0 * self.gain / max(self.cost_bytes - self.floor_bytes, 1)


def _holdout_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def probe_layers(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cost: Callable[[UpdatePlan], int],
    steps: int = 10,
    batch: int = 8,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[LayerProbe]:
    """Each parameter layer's gain from `steps` SGD steps of it alone on half the shots (x, y),
    measured on the other half, with its cost from `cost` (bytes of the single-layer plan) and
    the floor (`cost` of the plan that trains nothing). The probes train on `device`, in fp32
    (an edge device's arithmetic)."""
    prec = execution(device, "fp32")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    fit, held = perm[: len(y) // 2], perm[len(y) // 2 :]
    x, y = prec.to(x), prec.to(y)  # the shots: a few hundred images at most
    base = copy.deepcopy(model).eval().to(prec.device)
    before = _holdout_loss(base, x[held], y[held])
    floor = cost(make_plan(base, "sparse", layers=[]))
    probes = []
    for layer in parameter_layers(base):
        plan = make_plan(base, "sparse", layers=[layer])
        work = copy.deepcopy(base)
        plan.apply(work)
        opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=lr)
        for step in range(steps):
            idx = fit[(step * batch) % len(fit) :][:batch]
            opt.zero_grad()
            with fits_memory(prec.device, len(idx)):
                loss = nn.functional.cross_entropy(work(x[idx]), y[idx])
            prec.backward(loss)
            prec.step(opt)
        gain = before - _holdout_loss(work, x[held], y[held])
        probes.append(LayerProbe(layer, gain, cost(plan), floor))
    return probes


def plan_under_budget(
    model: nn.Module,
    factory: Callable[[], nn.Module],
    input_shape: Sequence[int],
    budget_bytes: int,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int = 8,
    num_classes: int | None = None,
    probe_steps: int = 10,
    seed: int = 0,
    margin: float = BUDGET_MARGIN,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    check_program: bool = False,
) -> tuple[UpdatePlan, TrainingMemory, list[LayerProbe]]:
    """The sparse plan that fits `budget_bytes` (modelled total at `batch`, times 1 + `margin`)
    and gains most per byte on the shots (x, y), its state priced for `optimizer`; raises
    :class:`BudgetTooSmallError` when no layer fits alone. The model replays the training
    program's packing, so the margin is small. `check_program` exports the chosen plan (on the
    CPU, `model`'s weights) and steps down, dropping the layer that joined last, until the
    program's plan plus optimizer state fits: the budget then holds in the runtime's own plan.
    The probes train on `device`."""
    trace: OpTrace = record_training_ops(factory, input_shape, batch)

    def memory(plan: UpdatePlan) -> TrainingMemory:
        return training_memory(
            factory,
            input_shape,
            plan,
            batch=batch,
            num_classes=num_classes,
            trace=trace,
            optimizer=optimizer,
        )

    probes = probe_layers(
        model,
        x,
        y,
        lambda p: memory(p).total_bytes,
        steps=probe_steps,
        batch=batch,
        seed=seed,
        device=device,
    )

    def fits(n_bytes: int) -> bool:
        return n_bytes * (1 + margin) <= budget_bytes

    smallest = min(p.cost_bytes for p in probes)
    if not fits(smallest):
        raise BudgetTooSmallError(budget_bytes, math.ceil(smallest * (1 + margin)), batch)
    chosen: list[str] = []
    for probe in sorted(probes, key=lambda p: -p.gain_per_kb):
        if probe.gain <= 0 or not fits(probe.cost_bytes):
            continue
        if fits(memory(make_plan(model, "sparse", layers=[*chosen, probe.layer])).total_bytes):
            chosen.append(probe.layer)
    if not chosen:  # nothing gains: the cheapest layer, so the plan still trains something
        chosen = [min(probes, key=lambda p: p.cost_bytes).layer]
    if not check_program:
        plan = replace(make_plan(model, "sparse", layers=chosen), budget_check="model")
        return plan, memory(plan), probes
    plan, mem, _ = step_down_in_program(model, chosen, memory, budget_bytes, input_shape, batch)
    return plan, mem, probes


def step_down_in_program(
    model: nn.Module,
    layers: Sequence[str],
    memory: Callable[[UpdatePlan], TrainingMemory],
    budget_bytes: int,
    input_shape: Sequence[int],
    batch: int,
) -> tuple[UpdatePlan, TrainingMemory, list[tuple[int, int]]]:
    """The longest prefix of `layers` (in the order they joined) whose exported training
    program's plan plus optimizer state (priced by `memory`) fits `budget_bytes`, and each
    try as (layers, program bytes); :class:`BudgetTooSmallError` when not even the first fits."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("checking a plan in its program exports it: give a model with weights")
    gen = torch.Generator().manual_seed(0)
    example = (
        torch.randn((batch, *input_shape), generator=gen),
        torch.zeros(batch, dtype=torch.long),
    )
    tries: list[tuple[int, int]] = []
    for n in range(len(layers), 0, -1):
        plan = make_plan(model, "sparse", layers=layers[:n])
        mem = memory(plan)
        work = copy.deepcopy(model).to("cpu").eval()
        plan.apply(work)
        program = export_training_program(work, example)
        tries.append((n, program.plan_bytes + mem.optimizer_bytes))
        if tries[-1][1] <= budget_bytes:
            return replace(plan, budget_check="program"), mem, tries
    raise BudgetTooSmallError(budget_bytes, tries[-1][1], batch)

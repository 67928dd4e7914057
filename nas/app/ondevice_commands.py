"""Plain functions behind `nas ondevice plan` and `nas ondevice adapt` (the CLI wires them).

`plan` prices an update plan of an arch (the bytes per layer and what trains); `adapt` takes a
run's deployed subnet, adapts it to a target domain on a few shots and writes the adapted model
and its report into ``RUN/ondevice/<mode>-<hash>/``, beside the deployed one, never over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from nas.core.files import write_bytes_atomic, write_json_atomic
from nas.core.space import SearchSpace
from nas.ondevice import (
    BUDGET_MARGIN,
    MODES,
    BudgetTooSmallError,
    TrainingMemory,
    UpdatePlan,
    adabn,
    finetune,
    make_plan,
    make_shift_task,
    plan_under_budget,
    target_accuracy,
    training_memory,
)

log = logging.getLogger(__name__)

__all__ = [
    "PlanChoice",
    "adapt_cmd",
    "adapt_model",
    "add_ondevice_parser",
    "choose_plan",
    "plan_cmd",
    "render_plan",
]


@dataclass(frozen=True)
class PlanChoice:
    """A plan and its modelled memory."""

    plan: UpdatePlan
    memory: TrainingMemory


def choose_plan(
    space: SearchSpace,
    arch: Mapping[str, Any],
    mode: str,
    *,
    model: nn.Module | None = None,
    blocks_k: int = 1,
    batch: int = 8,
    budget_kb: float | None = None,
    count_frozen: bool = False,
    shots: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PlanChoice:
    """The plan of `mode` for `arch`, checked against `budget_kb` when given (with the model's
    margin, `BUDGET_MARGIN`). Mode ``sparse`` picks its layers under the budget by gain per
    byte on `shots` (the adaptation shots)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {sorted(MODES)}")
    arch = space.validate(arch)
    shape = space.input_shape(arch)
    classes = getattr(space, "num_classes", None)

    def factory() -> nn.Module:
        return space.build(arch)

    if model is None:
        with torch.device("meta"):
            model = factory()
    if mode == "sparse":
        if budget_kb is None or shots is None:
            raise ValueError("mode 'sparse' needs --budget-kb and the adaptation shots (adapt)")
        plan, memory, _ = plan_under_budget(
            model, factory, shape, int(budget_kb * 1024), *shots, batch=batch, num_classes=classes
        )
        return PlanChoice(plan, memory)
    plan = make_plan(model, mode, blocks_k=blocks_k)
    memory = training_memory(
        factory, shape, plan, batch=batch, count_frozen=count_frozen, num_classes=classes
    )
    if budget_kb is not None and memory.total_bytes * (1 + BUDGET_MARGIN) > budget_kb * 1024:
        smallest = training_memory(
            factory, shape, make_plan(model, "last", blocks_k=1), batch=batch, num_classes=classes
        )  # the classifier alone: the cheapest plan that still trains
        raise BudgetTooSmallError(
            int(budget_kb * 1024),
            math.ceil(smallest.total_bytes * (1 + BUDGET_MARGIN)),
            batch,
            asked=(plan.describe(), math.ceil(memory.total_bytes * (1 + BUDGET_MARGIN))),
        )
    return PlanChoice(plan, memory)


def render_plan(choice: PlanChoice) -> str:
    """The table `nas ondevice plan` prints: bytes per layer, what trains, the totals."""
    mem = choice.memory
    lines = [
        f"plan: {choice.plan.describe()}  ({mem.settings()})",
        f"{'layer':32s} {'op':6s} {'trains':>6s} {'weights KB':>11s} {'kept KB':>9s}",
    ]
    for row in mem.layers:
        trains = "yes" if row.trainable_bytes else "-"
        weights = (row.trainable_bytes + row.frozen_bytes) / 1024
        lines.append(
            f"{row.name[:32]:32s} {row.op:6s} {trains:>6s} {weights:11.1f} "
            f"{row.saved_bytes / 1024:9.1f}"
        )
    lines += [
        f"trainable weights {mem.trainable_bytes / 1024:.1f} KB, their gradients "
        f"{mem.grad_bytes / 1024:.1f} KB, optimizer state {mem.optimizer_bytes / 1024:.1f} KB",
        f"kept for backward {mem.saved_bytes / 1024:.1f} KB; planned buffer "
        f"{mem.plan_bytes / 1024:.1f} KB (peak alive {mem.peak_bytes / 1024:.1f} KB)",
        f"frozen weights {mem.frozen_bytes / 1024:.1f} KB "
        f"({'counted' if mem.count_frozen else 'in flash, not counted'})",
        f"training memory: {mem.total_bytes / 1024:.1f} KB",
    ]
    return "\n".join(lines)


def adapt_model(
    model: nn.Module,
    space: SearchSpace,
    arch: Mapping[str, Any],
    data: Any,
    out_root: Path,
    *,
    mode: str,
    blocks_k: int = 1,
    budget_kb: float | None = None,
    shift: str = "rotate",
    shots: int = 10,
    steps: int = 60,
    lr: float = 0.05,
    batch: int = 8,
    engine: str = "pytorch",
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Adapt `model` (the deployed subnet of `arch`) to domain `shift` of `data`; writes
    ``adapted.safetensors`` and ``report.json`` into a new folder under `out_root`."""
    task = make_shift_task(data, shift, shots=shots, seed=seed)
    choice = choose_plan(
        space,
        arch,
        mode,
        model=model,
        blocks_k=blocks_k,
        batch=batch,
        budget_kb=budget_kb,
        shots=(task.shots_x, task.shots_y),
    )
    result = finetune(
        model, choice.plan, task.shots_x, task.shots_y, steps, batch, lr, seed, engine
    )
    report: dict[str, Any] = {
        "arch": space.key(arch),
        "plan": choice.plan.describe(),
        "trainable": list(choice.plan.trainable),
        "settings": choice.memory.settings(),
        "planned_bytes": choice.memory.total_bytes,
        "shift": shift,
        "shots_per_class": shots,
        "counts": task.counts,
        "accuracy_before": target_accuracy(model, task.test_x, task.test_y),
        "accuracy_adabn": target_accuracy(adabn(model, task.shots_x), task.test_x, task.test_y),
        "accuracy_after": target_accuracy(result.model, task.test_x, task.test_y),
        "engine": engine,
        "step_ms": result.step_ms,
        "losses": result.losses,
    }
    digest = hashlib.sha256(json.dumps(report["trainable"]).encode()).hexdigest()[:8]
    out = out_root / f"{mode}-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    write_bytes_atomic(out / "adapted.safetensors", save(state))
    write_json_atomic(out / "report.json", report)
    return out, report


def _open(args: Any) -> tuple[SearchSpace, Mapping[str, Any], Any]:
    """The space, the arch and (with --run) the finished run of a command line, every flag
    checked before any work (exit 2 naming the flag)."""
    from nas.app.config import load_config
    from nas.app.pipeline import open_finished_run
    from nas.app.validate import Problems, check_input_file, check_space

    p = Problems()
    if args.run:
        run = Path(args.run)
        check_input_file(p, "--run", args.run, folder=True)
        if not p:
            check_input_file(p, "--run", str(run / "config.yaml"))
            check_input_file(p, "--run", str(run / "supernet"), folder=True)
        p.raise_if_any("nas ondevice")
        config = load_config(run / "config.yaml")
        space = check_space(p, "--run", config.space.name, config.space.args)
    else:
        space = check_space(p, "--space", args.space, {})
    arch = p.check("--arch", lambda: space.from_key(args.arch)) if space is not None else None
    p.raise_if_any("nas ondevice")
    assert space is not None and arch is not None
    return space, arch, open_finished_run(Path(args.run)) if args.run else None


def plan_cmd(args: Any) -> int:
    """`nas ondevice plan`: print the plan's table."""
    space, arch, _ = _open(args)
    choice = choose_plan(
        space,
        arch,
        args.mode,
        blocks_k=args.blocks,
        batch=args.batch,
        budget_kb=args.budget_kb,
        count_frozen=args.count_frozen,
    )
    print(render_plan(choice))
    return 0


def adapt_cmd(args: Any) -> int:
    """`nas ondevice adapt`: adapt the run's subnet of --arch and print where it went."""
    from nas.app.errors import stage_work
    from nas.supernet import recalibrate_bn

    run = Path(args.run)
    space, arch, finished = _open(args)
    with stage_work("ondevice adapt", run):
        model = finished.supernet.export(arch).eval()
        images = finished.data.train.tensors[0]
        recalibrate_bn(model, [images[i : i + 100] for i in range(0, min(len(images), 2000), 100)])
        out, report = adapt_model(
            model,
            space,
            arch,
            finished.data,
            run / "ondevice",
            mode=args.mode,
            blocks_k=args.blocks,
            budget_kb=args.budget_kb,
            shift=args.shift,
            shots=args.shots,
            steps=args.steps,
            batch=args.batch,
            engine=args.engine,
            seed=args.seed,
        )
    print(
        f"{report['plan']}: target accuracy {report['accuracy_before']:.3f} -> "
        f"{report['accuracy_after']:.3f} (AdaBN {report['accuracy_adabn']:.3f}); "
        f"{report['planned_bytes'] / 1024:.1f} KB planned; adapted model in {out}"
    )
    return 0


def add_ondevice_parser(sub: Any) -> None:
    """`nas ondevice plan|adapt` (a parser builder)."""
    from nas.app.arg_checks import positive_float, positive_int
    from nas.ondevice import SHIFTS

    od = sub.add_parser("ondevice", help="on-device learning: update plans and adaptation")
    cmds = od.add_subparsers(dest="ondevice_command", required=True, metavar="SUBCOMMAND")
    for name, func, text in (
        ("plan", plan_cmd, "bytes per layer and what trains under an update plan"),
        ("adapt", adapt_cmd, "adapt a run's subnet to a target domain on a few shots"),
    ):
        p = cmds.add_parser(name, help=text)
        if name == "plan":
            where = p.add_mutually_exclusive_group(required=True)
            where.add_argument("--run", help="run folder (its space)")
            where.add_argument("--space", help="a registered space")
        else:
            p.add_argument("--run", required=True, help="run folder made by `nas run` / `nas demo`")
            p.add_argument("--shift", default="rotate", choices=sorted(SHIFTS))
            p.add_argument("--shots", type=positive_int, default=10, help="per class")
            p.add_argument("--steps", type=positive_int, default=60)
            p.add_argument("--engine", default="pytorch", choices=["pytorch", "executorch"])
            p.add_argument("--seed", type=int, default=0)
        p.add_argument("--arch", required=True, help="arch key")
        p.add_argument("--mode", default="bias", choices=sorted(MODES))
        p.add_argument("--blocks", type=positive_int, default=1, help="k of mode 'last'")
        p.add_argument("--batch", type=positive_int, default=8)
        p.add_argument("--budget-kb", type=positive_float, help="training-memory budget")
        p.add_argument("--count-frozen", action="store_true", help="count frozen weights too")
        p.set_defaults(func=func)

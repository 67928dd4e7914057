"""Plain functions behind `nas ondevice plan` and `nas ondevice adapt` (the CLI wires them).

`plan` prices an update plan of an arch (the bytes per layer and what trains); `adapt` takes a
run's deployed subnet (`deployed_model`: its compression chain's last fp32 model, else its
inherited weights), adapts it to a target domain on a few shots and writes the adapted model
and its report into ``RUN/ondevice/<arch>/<mode>-<hash>/``, beside the deployed one, never over
it. The shared part, which the run's `ondevice` stage calls too, is `nas.app.ondevice_adapt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.app.errors import InputError
from nas.app.ondevice_adapt import (
    ENGINES,
    FALLBACKS,
    PlanChoice,
    adapt_model,
    arch_folder,
    choose_plan,
    deployed_model,
    runtime_problem,
)
from nas.core.space import SearchSpace
from nas.ondevice import MODES, OPTIONAL_MODES

__all__ = ["adapt_cmd", "add_ondevice_parser", "plan_cmd", "render_plan"]


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
        f"{mem.plan_bytes / 1024:.1f} KB (peak alive {mem.peak_bytes / 1024:.1f} KB; it holds "
        "the trainable weights and their gradients)",
        f"frozen weights {mem.frozen_bytes / 1024:.1f} KB "
        f"({'counted' if mem.count_frozen else 'in flash, not counted'})",
        f"training memory: {mem.total_bytes / 1024:.1f} KB",
    ]
    return "\n".join(lines)


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
        optimizer=args.optimizer,
    )
    print(render_plan(choice))
    return 0


def adapt_cmd(args: Any) -> int:
    """`nas ondevice adapt`: adapt the run's deployed model of --arch and print where it went
    and which engine ran."""
    from nas.app.errors import stage_work

    flag, problem = runtime_problem(args.engine, args.optimizer, args.fallback)
    if problem:
        raise InputError(f"--{flag}: {problem}")
    run = Path(args.run)
    space, arch, finished = _open(args)
    with stage_work("ondevice adapt", run):
        steps = list(finished.config.compress.steps)
        deployed = deployed_model(run, space, arch, finished.data, finished.supernet, steps)
        out, report = adapt_model(
            deployed.model,
            space,
            arch,
            finished.data,
            run / "ondevice" / arch_folder(space, arch),
            mode=args.mode,
            blocks_k=args.blocks,
            budget_kb=args.budget_kb,
            shift=args.shift,
            shots=args.shots,
            steps=args.steps,
            lr=args.lr,
            batch=args.batch,
            engine=args.engine,
            seed=args.seed,
            optimizer=args.optimizer,
            fallback=args.fallback,
            factory=deployed.factory,
            extra={"source": deployed.source},
            batch_norm=args.batch_norm,
        )
    ran = report["engine"]
    if report["fallback_reason"]:
        ran += f" (fall-back: {report['fallback_reason']})"
    print(
        f"{report['plan']} of {deployed.source}: target accuracy "
        f"{report['accuracy_before']:.3f} -> {report['accuracy_after']:.3f} (AdaBN "
        f"{report['accuracy_adabn']:.3f}); {report['planned_bytes'] / 1024:.1f} KB planned; "
        f"trained in {ran}; adapted model in {out}"
    )
    return 0


def add_ondevice_parser(sub: Any) -> None:
    """`nas ondevice plan|adapt` (a parser builder)."""
    from nas.app.arg_checks import positive_float, positive_int
    from nas.ondevice import BATCH_NORM_MODES, OPTIMIZERS, SHIFTS

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
            p.add_argument("--engine", default="pytorch", choices=list(ENGINES))
            p.add_argument("--fallback", default="none", choices=list(FALLBACKS),
                           help="where the runtime cannot train as asked: fail (none) or "
                           "train in PyTorch, saying so (pytorch)")  # fmt: skip
            p.add_argument("--batch-norm", default="eval", choices=list(BATCH_NORM_MODES),
                           help="batch norm while adapting: frozen statistics (eval) or each "
                           "batch's, re-estimated on the shots afterwards (train)")  # fmt: skip
            p.add_argument("--lr", type=positive_float, default=0.05)
            p.add_argument("--seed", type=int, default=0)
        p.add_argument("--arch", required=True, help="arch key")
        p.add_argument("--mode", default="bias", choices=sorted(MODES | OPTIONAL_MODES))
        p.add_argument("--blocks", type=positive_int, default=1, help="k of mode 'last'")
        p.add_argument("--batch", type=positive_int, default=8)
        p.add_argument("--budget-kb", type=positive_float, help="training-memory budget")
        p.add_argument("--count-frozen", action="store_true", help="count frozen weights too")
        p.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS))
        p.set_defaults(func=func)

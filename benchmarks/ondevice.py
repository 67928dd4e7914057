"""On-device learning against its anchors (TinyTL, MCUNetV3): training memory planned against the
ExecuTorch program's plan, the runtime's training steps against PyTorch's, and accuracy
recovered on a shifted target domain per update mode and byte budget (issue 20).

Three parts, one results.json (and table.md, accuracy_vs_memory.png):

- memory: every update mode (full, last block, biases, BN affine + biases) on an arch of every
  built-in space at batch 8 (``--spaces``): the model's total against the program's plan (it
  holds the trainable weights and gradients) plus optimizer state (``plan_err_pct``), eager
  autograd's kept bytes beside it.
- runtime: the largest `tiny` arch, 20 SGD steps in the runtime (portable kernels, and frozen-
  only XNNPACK for the frozen-prefix mode) against the same steps in PyTorch: loss agreement,
  step times.
- adaptation: a `tiny` source model trained on the embedded digits (``--run RUN``: the run's
  first winner instead), the rotation shift, 10 and 50 shots, 3 seeds (``--shots``,
  ``--seeds``, ``--steps``): no adaptation, AdaBN, every mode, and the sparse plan at 1/2, 1/4,
  1/6, 1/10 of full fine-tuning's memory (batch 8) and at 256 KB (batch 1); each sparse plan
  is checked in its exported program and stepped down until that fits
  (``plan_under_budget(check_program=True)``); the memory model's choice alone is exported too
  (``plans_over_budget_model_only``).

    python benchmarks/ondevice.py --out /work/runs/bench/ondevice [--quick]

The commit is taken when the run starts (``-dirty`` when tracked files differ from it); a run
with fewer spaces, shots or seeds than the defaults labels its table as reduced.

``--quick`` is a smoke run (`tiny` only, fewer steps and seeds, no 256 KB row): its figures are
labelled as such. Timings share a 2-core CPU; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from nas.app.config import git_commit
from nas.backends import RuntimeTrainer, TrainingProgramError, export_training_program
from nas.data import load_embedded_digits
from nas.ondevice import (
    BudgetTooSmallError,
    adabn,
    check_memory,
    finetune,
    make_plan,
    make_shift_task,
    plan_under_budget,
    record_training_ops,
    step_down_in_program,
    target_accuracy,
    train_source_model,
    training_memory,
)
from search_spaces import get_space

log = logging.getLogger("bench.ondevice")
MODES = (("full", 1), ("last", 1), ("bias", 1), ("bn_bias", 1))
FRACTIONS = (2, 4, 6, 10)


def _largest(space: Any) -> dict[str, Any]:
    return {k: c.values[-1] for k, c in space.dimensions().items()}


def _smallest(space: Any) -> dict[str, Any]:
    return {k: c.values[0] for k, c in space.dimensions().items()}


CASES: dict[str, Any] = {
    "tiny": _largest, "mobilenetv3": _smallest, "nb201": lambda s: s.sample(rng=0),
    "fbnet": lambda s: s.sample(rng=0),
}  # fmt: skip


def memory_rows(spaces: list[str]) -> list[dict[str, Any]]:
    """Model against program plan, every mode, an arch of each space in `spaces`, batch 8."""
    rows = []
    for name in spaces:
        pick = CASES[name]
        space = get_space(name)
        arch = space.validate(pick(space))
        shape = space.input_shape(arch)
        net = space.build(arch).eval()
        for mode, k in MODES:
            plan = make_plan(net, mode, blocks_k=k)
            mem = training_memory(partial(space.build, arch), shape, plan, batch=8, num_classes=10)
            try:
                check, _ = check_memory(net, plan, mem, shape, num_classes=10)
                lacks = None
            except TrainingProgramError as err:  # measured all the same, and said
                check, _ = check_memory(net, plan, mem, shape, num_classes=10, check_kernels=False)
                lacks = str(err)
            rows.append({"space": name, "arch": space.key(arch), **check.as_row(),
                         "runtime_lacks": lacks})  # fmt: skip
            log.info("memory %s %s: %+.2f %%", name, mode, check.error_pct)
    return rows


def _timed_steps(trainer: RuntimeTrainer, x: torch.Tensor, y: torch.Tensor, n: int) -> tuple:
    losses, times = [], []
    for i in range(n):
        start = time.perf_counter()
        losses.append(trainer.step(x[i % len(x)], y[i % len(y)]))
        times.append(time.perf_counter() - start)
    return losses, 1e3 * float(np.min(times[1:] or times))


def runtime_rows(quick: bool) -> list[dict[str, Any]]:
    """20 runtime steps vs PyTorch on the largest `tiny` arch, portable and frozen-only XNNPACK."""
    space = get_space("tiny")
    arch = _largest(space)
    torch.manual_seed(0)
    net = space.build(arch).eval()
    steps = 5 if quick else 20
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, 8, 3, 32, 32, generator=gen)
    ys = torch.randint(0, 10, (steps, 8), generator=gen)
    rows = []
    for mode, k in MODES:
        work = copy.deepcopy(net)
        plan = make_plan(work, mode, blocks_k=k)
        plan.apply(work)
        ref = copy.deepcopy(work)
        opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.05)
        ref_losses, ref_times = [], []
        for i in range(steps):
            start = time.perf_counter()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ref(xs[i]), ys[i])
            loss.backward()
            opt.step()
            ref_times.append(time.perf_counter() - start)
            ref_losses.append(loss.item())
        row: dict[str, Any] = {"mode": plan.describe(), "steps": steps}
        row["pytorch_step_ms"] = 1e3 * float(np.min(ref_times[1:]))
        for partition in ("portable", "xnnpack_frozen") if mode == "last" else ("portable",):
            program = export_training_program(copy.deepcopy(work), (xs[0], ys[0]), partition)
            trainer = RuntimeTrainer(program, lr=0.05)
            losses, step_ms = _timed_steps(trainer, xs, ys, steps)
            rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
            row[f"{partition}_loss_rel_err"] = rel
            row[f"{partition}_step_ms"] = step_ms
            row[f"{partition}_delegated_ops"] = program.delegated_ops
            if partition == "portable":
                trained = copy.deepcopy(work)
                trainer.load_into(trained)
                row["weights_max_abs_diff"] = max(
                    float((a - b).abs().max())
                    for a, b in zip(trained.parameters(), ref.parameters(), strict=True)
                )
        if "xnnpack_frozen_step_ms" in row:
            row["xnnpack_frozen_speedup"] = row["portable_step_ms"] / row["xnnpack_frozen_step_ms"]
        rows.append(row)
        log.info("runtime %s: %s", mode, row)
    return rows


def _source_model(run: str | None, data: Any, quick: bool) -> tuple[Any, dict, nn.Module]:
    if run:
        from nas.app.pipeline import open_finished_run
        from nas.supernet import recalibrate_bn

        finished = open_finished_run(run)
        winners = (Path(run) / "winners.csv").read_text().splitlines()
        key = winners[1].split(",")[0]
        arch = finished.space.from_key(key)
        model = finished.supernet.export(arch).eval()
        x = data.train.tensors[0]
        recalibrate_bn(model, [x[i : i + 100] for i in range(0, min(len(x), 2000), 100)])
        return finished.space, arch, model
    space = get_space("tiny")
    arch = _largest(space)
    torch.manual_seed(0)
    x, y = data.train.tensors
    model = train_source_model(space.build(arch), x, y, epochs=8 if quick else 10, lr=0.1, batch=32)
    return space, arch, model


def _accuracy(model: nn.Module, task: Any) -> float:
    return round(100 * target_accuracy(model, task.test_x, task.test_y), 2)


def adaptation_rows(
    run: str | None, quick: bool, shots_list: list[int], seeds: int, steps: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Accuracy on the target test set per mode and budget, per shots and seed."""
    data = load_embedded_digits(copies_train=2 if quick else 8)
    space, arch, model = _source_model(run, data, quick)
    shape, factory = space.input_shape(arch), (lambda: space.build(arch))
    source_acc = round(100 * target_accuracy(model, *data.test.tensors), 2)
    full_mem = training_memory(factory, shape, make_plan(model, "full"), num_classes=10)
    rows = []
    for shots in shots_list:
        for seed in range(seeds):
            task = make_shift_task(data, "rotate", shots=shots, seed=seed)
            base = {"shots": shots, "seed": seed, "counts": task.counts}
            rows.append({**base, "mode": "none", "accuracy": _accuracy(model, task)})
            rows.append(
                {**base, "mode": "adabn", "accuracy": _accuracy(adabn(model, task.shots_x), task)}
            )
            for mode, k in MODES:
                plan = make_plan(model, mode, blocks_k=k)
                mem = training_memory(factory, shape, plan, num_classes=10)
                res = finetune(
                    model, plan, task.shots_x, task.shots_y, steps=steps, seed=seed, lr=0.02
                )
                rows.append({**base, "mode": plan.describe(), "planned_bytes": mem.total_bytes,
                             "accuracy": _accuracy(res.model, task)})  # fmt: skip
            budgets = [(f"1/{f}", full_mem.total_bytes // f, 8) for f in FRACTIONS]
            budgets += [] if quick else [("256KB", 256 * 1024, 1)]
            for label, budget, batch in budgets:
                rows.append(
                    {
                        **base,
                        **_sparse_row(model, factory, shape, task, budget, batch, steps, seed),
                        "budget": label,
                    }
                )
    return rows, {"source_accuracy": source_acc, "full_planned_bytes": full_mem.total_bytes,
                  "arch": space.key(arch), "space": space.name}  # fmt: skip


def _sparse_row(
    model: nn.Module,
    factory: Any,
    shape: Any,
    task: Any,
    budget: int,
    batch: int,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    try:
        chosen, _, _ = plan_under_budget(
            model, factory, shape, budget, task.shots_x, task.shots_y, batch=batch,
            num_classes=10, seed=seed,
        )  # fmt: skip
        trace = record_training_ops(factory, shape, batch)
        price = partial(training_memory, factory, shape, batch=batch, num_classes=10, trace=trace)
        # the plan used: the model's choice, stepped down until its exported program fits
        plan, mem, tries = step_down_in_program(model, chosen.layers, price, budget, shape, batch)
    except BudgetTooSmallError as err:
        return {"mode": "sparse", "budget_bytes": budget, "error": str(err)}
    res = finetune(
        model, plan, task.shots_x, task.shots_y, steps=steps, batch=batch, seed=seed, lr=0.02
    )
    return {"mode": "sparse", "budget_bytes": budget, "batch": batch,
            "planned_bytes": mem.total_bytes, "program_bytes": tries[-1][1],
            "layers": list(plan.layers), "budget_check": plan.budget_check,
            "over_budget": tries[-1][1] > budget, "model_only_layers": list(chosen.layers),
            "model_only_program_bytes": tries[0][1], "model_only_over_budget": len(tries) > 1,
            "accuracy": _accuracy(res.model, task)}  # fmt: skip


def targets(memory: list, runtime: list, adapt: list) -> dict[str, Any]:
    def mean(mode: str, shots: int, budget: str | None = None) -> float:
        vals = [r["accuracy"] for r in adapt if r["mode"] == mode and r["shots"] == shots
                and r.get("budget") == budget and "accuracy" in r]  # fmt: skip
        return float(np.mean(vals)) if vals else float("nan")

    shots = max(r["shots"] for r in adapt)
    none, full = mean("none", shots), mean("full", shots)
    sixth = [mean("sparse", shots, b) for b in ("1/6", "1/10")]
    best = max((v for v in sixth if v == v), default=float("nan"))
    return {
        "plan_err_pct": max(abs(r["error_pct"]) for r in memory),
        "gain_recovered_at_sixth": (best - none) / (full - none) if full != none else None,
        "gain_shots": shots,
        "runtime_loss_rel_err": max(r["portable_loss_rel_err"] for r in runtime),
        "plans_over_budget": sum(1 for r in adapt if r.get("over_budget")),
        # the memory model's choice before the program's check stepped it down
        "plans_over_budget_model_only": sum(1 for r in adapt if r.get("model_only_over_budget")),
        "gain_seeds": len({r["seed"] for r in adapt if r["shots"] == shots}),
        "xnnpack_frozen_speedup": min(
            (r["xnnpack_frozen_speedup"] for r in runtime if "xnnpack_frozen_speedup" in r),
            default=None,
        ),
    }


def write_table_and_plot(out: Path, results: dict[str, Any]) -> None:
    """table.md (every row, the settings stated) and accuracy_vs_memory.png."""
    label = " (QUICK smoke run: not the benchmark's figures)" if results["quick"] else ""
    full = (results["spaces"], results["shots"], results["seeds"]) == (list(CASES), [10, 50], 3)
    if not results["quick"] and not full:
        label = (
            f" (reduced run: spaces {','.join(results['spaces'])}, shots "
            f"{','.join(map(str, results['shots']))}, {results['seeds']} seed(s), "
            f"{results['steps']} steps; not the issue's full settings)"
        )
    lines = [f"# On-device learning{label}", "", f"Settings: {results['settings']}; load "
             f"average {results['load_avg']}, {results['cpus']} CPUs (timings under shared load).",
             "", f"Command: `{results['command']}` at commit {results['commit']}.",
             "", "| space | mode | model KB | program KB | error % | eager KB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["memory"]:
        lines.append(f"| {r['space']}{' (a)' if r.get('runtime_lacks') else ''} | {r['mode']} | {r['model_total_bytes'] / 1024:.1f} | "
                     f"{r['program_total_bytes'] / 1024:.1f} | {r['error_pct']:+.2f} | "
                     f"{r['eager_saved_bytes'] / 1024:.1f} |")  # fmt: skip
    if any(r.get("runtime_lacks") for r in results["memory"]):
        lines += ["", "(a) the runtime has no kernel for an op of this program (its plan is measured, "
                  "it cannot run): " + next(r["runtime_lacks"] for r in results["memory"] if r.get("runtime_lacks"))]  # fmt: skip
    lines += ["", "| mode | loss rel err | portable ms | XNNPACK (frozen) ms | PyTorch ms |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in results["runtime"]:
        lines.append(f"| {r['mode']} | {r['portable_loss_rel_err']:.1e} | {r['portable_step_ms']:.0f}"
                     f" | {r.get('xnnpack_frozen_step_ms', float('nan')):.0f} | {r['pytorch_step_ms']:.0f} |")  # fmt: skip
    lines += ["", "| shots | seed | mode | budget | planned KB | program KB | accuracy % |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["adaptation"]:
        lines.append(f"| {r['shots']} | {r['seed']} | {r['mode']} | {r.get('budget', '')} | "
                     f"{r.get('planned_bytes', 0) / 1024:.1f} | {r.get('program_bytes', 0) / 1024:.1f} | "
                     f"{r.get('accuracy', r.get('error', ''))} |")  # fmt: skip
    if "targets" in results:
        lines += ["", "Targets: `" + json.dumps(results["targets"]) + "`"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    rows = [r for r in results["adaptation"] if "planned_bytes" in r and "accuracy" in r]
    if not rows:
        return
    from nas import viz

    points = [
        {"mode": r["mode"], "memory_bytes": r["planned_bytes"], "accuracy": r["accuracy"]}
        for r in rows
    ]
    baselines: dict[str, float] = {}
    for mode in ("none", "adabn"):
        vals = [r["accuracy"] for r in results["adaptation"] if r["mode"] == mode]
        if vals:
            baselines[f"{mode} (mean)"] = float(np.mean(vals))
    xlabel = "training memory, KB (batch 8, model)"
    fig = viz.plot_accuracy_memory(points, baselines, out / "accuracy_vs_memory.png", xlabel)
    viz.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--run", help="a run folder (nas demo): adapt its first winner")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="memory,runtime,adapt")
    parser.add_argument("--spaces", help="memory part's spaces (default: all four; quick: tiny)")
    parser.add_argument("--shots", help="shots per class, comma-separated (default 10,50)")
    parser.add_argument("--seeds", type=int, help="seeds per shots (default 3; quick 1)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default 150; quick 30)")
    args = parser.parse_args(argv)
    commit = git_commit(Path(__file__).resolve().parents[1], mark_dirty=True)  # the code it runs
    spaces = (args.spaces or ("tiny" if args.quick else ",".join(CASES))).split(",")
    shots_list = [int(v) for v in (args.shots or ("10" if args.quick else "10,50")).split(",")]
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (30 if args.quick else 150)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    start = time.time()
    memory = memory_rows(spaces) if "memory" in parts else []
    runtime = runtime_rows(args.quick) if "runtime" in parts else []
    adapt, source = (
        adaptation_rows(args.run, args.quick, shots_list, seeds, steps)
        if "adapt" in parts
        else ([], {})
    )
    results = {
        "quick": args.quick,
        "commit": commit,
        "command": "python benchmarks/ondevice.py " + " ".join(argv or sys.argv[1:]),
        "spaces": spaces,
        "shots": shots_list,
        "seeds": seeds,
        "steps": steps,
        "settings": "batch 8 (256 KB row: batch 1), SGD without momentum, frozen weights in flash",
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "wall_s": time.time() - start,
        "source": source,
        "memory": memory,
        "runtime": runtime,
        "adaptation": adapt,
    }
    if memory and runtime and adapt:
        results["targets"] = {**targets(memory, runtime, adapt), "commit": commit}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_table_and_plot(out, results)
    print(json.dumps(results.get("targets", {}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

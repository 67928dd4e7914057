"""What `nas ondevice adapt` and the run's `ondevice` stage share: the plan of a mode under a
budget (`choose_plan`), the model a run deployed for an arch (`deployed_model`: its compression
chain's last fp32 model, else its inherited weights), and `adapt_model`, which adapts it to a
target domain on a few shots in PyTorch or the runtime (falling back to PyTorch only when asked)
and writes the adapted model and its report beside the deployed one, never over it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from nas.app.errors import InputError
from nas.backends import TrainingProgramError, check_runtime_optimizer
from nas.core.files import write_bytes_atomic, write_json_atomic
from nas.core.space import SearchSpace
from nas.ondevice import (
    BUDGET_MARGIN,
    MODES,
    OPTIONAL_MODES,
    BudgetTooSmallError,
    TrainingMemory,
    UpdatePlan,
    adabn,
    add_lite_residuals,
    finetune,
    make_plan,
    make_shift_task,
    plan_under_budget,
    training_memory,
)

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "FALLBACKS",
    "Deployed",
    "PlanChoice",
    "adapt_model",
    "arch_folder",
    "choose_plan",
    "deployed_model",
    "runtime_problem",
]

ENGINES = ("pytorch", "executorch")
#: what to do where the runtime cannot train as asked: fail, naming what it lacks ("none"), or
#: train in PyTorch instead, the output saying so ("pytorch")
FALLBACKS = ("none", "pytorch")
_FALLBACK_HINT = (
    "ask for the fall-back (`--fallback pytorch`, or `ondevice.fallback: pytorch` in a run "
    "config) to train in PyTorch instead"
)


@dataclass(frozen=True)
class PlanChoice:
    """A plan, its modelled memory, and the network it trains when the mode changes the
    deployed one (``lite_residual``: a copy with TinyTL's branches added; else None)."""

    plan: UpdatePlan
    memory: TrainingMemory
    network: nn.Module | None = None


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
    factory: Callable[[], nn.Module] | None = None,
    optimizer: str = "sgd",
) -> PlanChoice:
    """The plan of `mode` for `arch`, checked against `budget_kb` when given (with the model's
    margin, `BUDGET_MARGIN`). Mode ``sparse`` picks its layers under the budget by gain per
    byte on `shots` (the adaptation shots). `factory` builds the model's structure when it is
    not the plain arch's (a pruned model); `optimizer` prices its state."""
    if mode not in MODES and mode not in OPTIONAL_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {sorted(MODES | OPTIONAL_MODES)}")
    arch = space.validate(arch)
    shape = space.input_shape(arch)
    classes = getattr(space, "num_classes", None)
    if factory is None:
        factory = functools.partial(space.build, arch)

    if model is None:
        with torch.device("meta"):
            model = factory()
    network = None
    if mode == "lite_residual":  # the branches are trained, so they are priced too
        network = model = add_lite_residuals(model, shape)
        factory = functools.partial(_with_branches, factory, tuple(shape))
    if mode == "sparse":
        if budget_kb is None or shots is None:
            raise ValueError("mode 'sparse' needs --budget-kb and the adaptation shots (adapt)")
        plan, memory, _ = plan_under_budget(
            model,
            factory,
            shape,
            int(budget_kb * 1024),
            *shots,
            batch=batch,
            num_classes=classes,
            optimizer=optimizer,
        )
        return PlanChoice(plan, memory)
    plan = make_plan(model, mode, blocks_k=blocks_k)
    memory = training_memory(
        factory,
        shape,
        plan,
        batch=batch,
        count_frozen=count_frozen,
        num_classes=classes,
        optimizer=optimizer,
    )
    if budget_kb is not None and memory.total_bytes * (1 + BUDGET_MARGIN) > budget_kb * 1024:
        smallest = training_memory(
            factory,
            shape,
            make_plan(model, "last", blocks_k=1),
            batch=batch,
            num_classes=classes,
            optimizer=optimizer,
        )  # the classifier alone: the cheapest plan that still trains
        raise BudgetTooSmallError(
            int(budget_kb * 1024),
            math.ceil(smallest.total_bytes * (1 + BUDGET_MARGIN)),
            batch,
            asked=(plan.describe(), math.ceil(memory.total_bytes * (1 + BUDGET_MARGIN))),
        )
    return PlanChoice(plan, memory, network)


def _with_branches(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> nn.Module:
    return add_lite_residuals(factory(), shape)


def runtime_problem(engine: str, optimizer: str, fallback: str) -> tuple[str, str]:
    """What `engine` cannot do with `optimizer` when no fall-back is asked for, said before any
    work: ("engine", why) when the runtime is not installed, ("optimizer", why) when it lacks
    the optimizer, else ("", "")."""
    if engine != "executorch" or fallback == "pytorch":
        return "", ""
    if importlib.util.find_spec("executorch") is None:
        why = "ExecuTorch is not installed: pip install -e '.[executorch]'"
        return "engine", f"{why}; {_FALLBACK_HINT}"
    try:
        check_runtime_optimizer(optimizer)
    except TrainingProgramError as err:
        return "optimizer", f"{err}; {_FALLBACK_HINT}"
    return "", ""


@dataclass(frozen=True)
class Deployed:
    """The model a run deployed for an arch, what builds its structure, and where it came from."""

    model: nn.Module
    factory: Callable[[], nn.Module]  # its structure (a pruned model's channels), for pricing
    source: str  # "compress/<arch>/02-prune" or "inherited weights"


def deployed_model(
    run_dir: Path,
    space: SearchSpace,
    arch: Mapping[str, Any],
    data: Any,
    supernet: Any,
    compress_steps: Sequence[str] = (),
) -> Deployed:
    """The model to adapt for `arch` in a run: the last fp32 model its compression chain made
    (`prune`, else `distill`, among `compress_steps`: the runtime's training program trains
    fp32, so the int8 models are not it), else the subnet with the supernet's weights, batch
    norm recalibrated on the train split (the chain did not run, or made no fp32 model)."""
    from nas.compress import chain_dir, load_model

    arch = space.validate(arch)
    chain = chain_dir(run_dir, space, arch)
    for step in [s for s in reversed(compress_steps) if s in ("prune", "distill")][:1]:
        folders = sorted(chain.glob(f"[0-9][0-9]-{step}"))
        if folders and (folders[-1] / "done.json").is_file():
            build = functools.partial(space.build, arch)
            model, ckpt = load_model(folders[-1] / "model.safetensors", build)
            factory = functools.partial(_rebuilt, build, ckpt.structure)
            return Deployed(model.eval(), factory, str(folders[-1].relative_to(run_dir)))
    from nas.supernet import recalibrate_bn

    model = supernet.export(arch).eval()
    images = data.train.tensors[0]
    recalibrate_bn(model, [images[i : i + 100] for i in range(0, min(len(images), 2000), 100)])
    return Deployed(model.eval(), functools.partial(space.build, arch), "inherited weights")


def _rebuilt(build: Callable[[], nn.Module], structure: Mapping[str, Any]) -> nn.Module:
    from nas.compress import apply_structure

    return apply_structure(build(), structure)


def arch_folder(space: SearchSpace, arch: Mapping[str, Any]) -> str:
    """The folder name of an arch's adapted models (its compression chain's, when it has one)."""
    from nas.compress import chain_dir

    return chain_dir(Path("."), space, space.validate(arch)).name


def _train(
    model: nn.Module, plan: UpdatePlan, task: Any, engine: str, fallback: str, **kw: Any
) -> tuple[Any, str]:
    """`finetune` on the task's shots in `engine`; where the runtime cannot, an `InputError`
    naming what it lacks, or (fallback "pytorch") PyTorch, with the reason returned."""
    try:
        return finetune(model, plan, task.shots_x, task.shots_y, engine=engine, **kw), ""
    except TrainingProgramError as err:
        if fallback != "pytorch":
            raise InputError(f"{err}; {_FALLBACK_HINT}") from err
        log.warning("the runtime cannot train this (%s); training in PyTorch, as asked", err)
        return finetune(model, plan, task.shots_x, task.shots_y, engine="pytorch", **kw), str(err)


def _scores(models: dict[str, nn.Module], task: Any, seed: int) -> dict[str, Any]:
    """Target-test accuracy of each model, and the adapted model's gain over no adaptation with
    its paired bootstrap interval over the test images' source groups (test-set noise only)."""
    from nas.supernet import correct_mask, difference_interval

    correct = {k: np.asarray(correct_mask(m, task.test_x, task.test_y)) for k, m in models.items()}
    diff = difference_interval(correct["after"], correct["before"], task.test_groups, seed=seed)
    out: dict[str, Any] = {f"accuracy_{k}": float(v.mean()) for k, v in correct.items()}
    out.update(gain_pts=100 * diff.estimate, gain_ci95_pts=[100 * diff.low, 100 * diff.high])
    out["gain_resolvable"] = bool(diff.low > 0 or diff.high < 0)
    return out


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
    optimizer: str = "sgd",
    fallback: str = "none",
    factory: Callable[[], nn.Module] | None = None,
    extra: Mapping[str, Any] | None = None,
    batch_norm: str = "eval",
) -> tuple[Path, dict[str, Any]]:
    """Adapt `model` (the deployed subnet of `arch`, built by `factory` when not the plain
    arch) to domain `shift` of `data` in `engine`, falling back to PyTorch where the runtime
    cannot only with ``fallback="pytorch"``; writes ``adapted.safetensors`` and ``report.json``
    (with `extra` in it) into a new folder under `out_root`. The report says which engine ran.
    `batch_norm` is `finetune`'s ("train": batch statistics, then re-estimated on the shots)."""
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
        factory=factory,
        optimizer=optimizer,
    )
    kw = dict(
        steps=steps, batch=batch, lr=lr, seed=seed, optimizer=optimizer, batch_norm=batch_norm
    )
    trained = choice.network if choice.network is not None else model
    result, why = _train(trained, choice.plan, task, engine, fallback, **kw)
    mem = choice.memory
    state_bytes = mem.optimizer_bytes  # the trainable weights are in the program's plan
    report: dict[str, Any] = {
        **dict(extra or {}),
        "arch": space.key(arch),
        "mode": mode,
        # the adapted weights' structure: "lite_residual" when TinyTL's branches were added
        # (load them into nas.ondevice.add_lite_residuals(net, input_shape)), else "deployed"
        "structure": "lite_residual" if choice.network is not None else "deployed",
        "plan": choice.plan.describe(),
        "trainable": list(choice.plan.trainable),
        "settings": mem.settings(),
        "planned_bytes": mem.total_bytes,
        "program_bytes": result.program_plan_bytes + state_bytes
        if result.program_plan_bytes
        else None,  # the runtime program's plan (trainable weights in it) and optimizer state
        "shift": shift,
        "shots_per_class": shots,
        "counts": task.counts,
        **_scores(
            {"before": model, "adabn": adabn(model, task.shots_x), "after": result.model},
            task,
            seed,
        ),
        "engine": result.engine,
        "engine_asked": engine,
        "fallback_reason": why or None,
        "optimizer": optimizer,
        "batch_norm": batch_norm,
        "step_ms": result.step_ms,
        "losses": result.losses,
    }
    return _write(out_root, report, result.model), report


def _write(out_root: Path, report: dict[str, Any], model: nn.Module) -> Path:
    """The adapted model and its report in a new folder under `out_root`, named by the mode
    and a digest of what trained (and the batch norm mode, when not frozen)."""
    named = report["trainable"] + (["batch_norm=train"] if report["batch_norm"] == "train" else [])
    digest = hashlib.sha256(json.dumps(named).encode()).hexdigest()[:8]
    out = out_root / f"{report['mode']}-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(out / "adapted.safetensors", save(state))
    write_json_atomic(out / "report.json", report)
    return out

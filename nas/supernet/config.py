"""Supernet training configuration: the schedules' options, phases, `SupernetConfig` and
OFA's progressive-shrinking plan (Once-for-All, Cai et al., ICLR 2020)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from nas.core.space import SearchSpace
from nas.supernet.device import PRECISIONS

__all__ = [
    "SCHEDULES",
    "Phase",
    "ProgressiveOptions",
    "SPOSOptions",
    "SandwichOptions",
    "SupernetConfig",
    "dim_group",
    "make_config",
    "progressive_phases",
]


@dataclass
class SandwichOptions:
    """Sandwich rule: per step the largest, the smallest and `n_random` random subnets; the
    largest learns from the labels, the others from its detached soft outputs."""

    n_random: int = 2
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    #: weight of the label loss for the non-largest subnets (BigNAS and AttentiveNAS use 0)
    student_ce_weight: float = 0.0


@dataclass
class SPOSOptions:
    """Uniform single-path sampling: one random subnet per step, label loss only."""

    n_subnets: int = 1


@dataclass
class ProgressiveOptions:
    """Progressive shrinking: phases that make more dimension groups elastic, one after the
    other, each with its own epochs and learning rate. After the first phase the largest
    subnet is frozen as the teacher of the rest (knowledge distillation, `kd_weight`).

    `phases` is a list of `Phase` or of dicts with its fields; None derives OFA's plan (full,
    kernel, depth, expand) from the space's dimension groups and `SupernetConfig.epochs` / `lr`.
    """

    phases: list[Any] | None = None
    n_subnets: int = 2
    kd_weight: float = 1.0
    kd_temperature: float = 1.0


@dataclass
class Phase:
    """One training phase: which dimension groups are elastic (None: all), optional value
    restrictions per group, epochs and learning rate.

    A group is the last dot-separated part of a dimension key: `s0.b1.k` -> `k`,
    `s2.depth` -> `depth`, `resolution` -> `resolution`. Dimensions outside the elastic groups
    are held at the largest arch's value.
    """

    name: str
    epochs: int
    lr: float
    elastic: tuple[str, ...] | None = None
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)


SCHEDULES: dict[str, type] = {
    "sandwich": SandwichOptions,
    "progressive": ProgressiveOptions,
    "spos": SPOSOptions,
}


@dataclass
class SupernetConfig:
    """Everything that decides a training run (stored in the run folder; resuming checks it).

    `batch_size` is per process and micro-batch: a step consumes
    `batch_size * accumulate * world_size` images. `options` holds the schedule's own
    hyper-parameters (see `SCHEDULES[schedule]`).
    """

    schedule: str = "sandwich"
    epochs: int = 10
    batch_size: int = 64
    accumulate: int = 1
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    options: dict[str, Any] = field(default_factory=dict)
    #: how the run executes, not what it learns (a resume may change them): the device (auto,
    #: cpu, cuda, cuda:N, mps), autocast precision (fp32, bf16, fp16), channels-last memory
    #: format, torch.compile, and the DataLoader workers that decode streamed images (data
    #: held in memory as tensors is indexed directly, whatever this says)
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 0

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("sgd", "adamw")
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS
    #: the fields a resumed run may change (`EXECUTION` plus how often it checkpoints)
    EXECUTION: ClassVar[tuple[str, ...]] = (
        "device",
        "precision",
        "channels_last",
        "compile",
        "num_workers",
    )

    def schedule_options(self) -> Any:
        """The schedule's options dataclass, validated."""
        cls = SCHEDULES[self.schedule]
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(self.options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for schedule {self.schedule!r}; valid: {valid}"
            )
        opts = cls(**self.options)
        for name in ("n_random", "n_subnets"):
            if hasattr(opts, name) and not (
                isinstance(getattr(opts, name), int) and getattr(opts, name) >= 0
            ):
                raise ValueError(f"option {name} must be an int >= 0, got {getattr(opts, name)!r}")
        if isinstance(opts, SPOSOptions | ProgressiveOptions) and opts.n_subnets < 1:
            raise ValueError(f"option n_subnets must be >= 1, got {opts.n_subnets}")
        for name in ("kd_weight", "student_ce_weight"):
            if hasattr(opts, name) and getattr(opts, name) < 0:
                raise ValueError(f"option {name} must be >= 0, got {getattr(opts, name)}")
        if hasattr(opts, "kd_temperature") and opts.kd_temperature <= 0:
            raise ValueError(f"option kd_temperature must be > 0, got {opts.kd_temperature}")
        return opts

    def check(self) -> SupernetConfig:
        """Raise one error naming every problem; return self."""
        problems: list[str] = []
        if self.schedule not in SCHEDULES:
            import difflib

            close = difflib.get_close_matches(str(self.schedule), list(SCHEDULES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"unknown schedule {self.schedule!r}{hint}; valid schedules: {sorted(SCHEDULES)}"
            )
        for name in ("epochs", "batch_size", "accumulate"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "checkpoint_every", "seed", "num_workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"{name} must be an int >= 0, got {v!r}")
        if self.optimizer not in self.OPTIMIZERS:
            problems.append(
                f"optimizer must be one of {list(self.OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            problems.append(f"lr must be a number > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            problems.append(f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm!r}")
        if self.precision not in self.PRECISIONS:
            problems.append(
                f"precision must be one of {list(self.PRECISIONS)}, got {self.precision!r}"
            )
        if not isinstance(self.device, str) or not self.device:
            problems.append(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.options, Mapping):
            problems.append(f"options must be a mapping, got {type(self.options).__name__}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.schedule_options()
        return self

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["options"] = _jsonable(d["options"])
        return d


def make_config(
    config: SupernetConfig | Mapping[str, Any] | None = None, **overrides: Any
) -> SupernetConfig:
    """A checked `SupernetConfig` from a config, a dict, or defaults, with `overrides` applied.

    Unknown keys fail with the list of valid ones, so a CLI can pass its flags straight through.
    """
    if isinstance(config, SupernetConfig):
        base = dataclasses.asdict(config)
    elif config is None:
        base = {}
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise TypeError(
            f"config must be a SupernetConfig, a mapping or None, got {type(config).__name__}"
        )
    base.update(overrides)
    valid = [f.name for f in dataclasses.fields(SupernetConfig)]
    unknown = sorted(set(base) - set(valid))
    if unknown:
        raise ValueError(f"unknown training config key(s) {unknown}; valid keys: {valid}")
    return SupernetConfig(**base).check()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def dim_group(key: str) -> str:
    """The group a dimension belongs to: the last dot-separated part of its key."""
    return key.rsplit(".", 1)[-1]


def _as_phase(p: Phase | Mapping[str, Any], i: int) -> Phase:
    if isinstance(p, Phase):
        phase = p
    elif isinstance(p, Mapping):
        valid = [f.name for f in dataclasses.fields(Phase)]
        unknown = sorted(set(p) - set(valid))
        missing = [k for k in ("name", "epochs", "lr") if k not in p]
        if unknown or missing:
            raise ValueError(
                f"phase {i} {dict(p)!r}: "
                + (f"unknown key(s) {unknown}; " if unknown else "")
                + (f"missing key(s) {missing}; " if missing else "")
                + f"valid keys: {valid}"
            )
        elastic = p.get("elastic")
        phase = Phase(
            name=str(p["name"]),
            epochs=p["epochs"],
            lr=p["lr"],
            elastic=None if elastic is None else tuple(elastic),
            choices={str(k): tuple(v) for k, v in dict(p.get("choices", {})).items()},
        )
    else:
        raise TypeError(f"phase {i} must be a Phase or a dict, got {type(p).__name__}")
    if not isinstance(phase.epochs, int) or phase.epochs < 1:
        raise ValueError(f"phase {phase.name!r}: epochs must be an int >= 1, got {phase.epochs!r}")
    if not (isinstance(phase.lr, int | float) and phase.lr > 0):
        raise ValueError(f"phase {phase.name!r}: lr must be > 0, got {phase.lr!r}")
    return phase


def progressive_phases(space: SearchSpace, epochs: int, lr: float) -> list[Phase]:
    """OFA's progressive-shrinking plan for `space`: full, kernel, depth (top two depths first,
    then all), expand (with width; top two values first, then all). Resolution is elastic in
    every phase, as in OFA. `epochs` is split across the phases (at least 1 each)."""
    groups = {dim_group(k) for k in space.keys}
    values: dict[str, tuple[Any, ...]] = {}
    for k, c in space.dimensions().items():
        values.setdefault(dim_group(k), c.values)
    base = ("resolution",) if "resolution" in groups else ()
    plan: list[tuple[str, tuple[str, ...], dict[str, tuple[Any, ...]], float, float]] = [
        ("full", base, {}, 1.0, 1.0)
    ]
    elastic = base
    if "k" in groups:
        elastic = (*elastic, "k")
        plan.append(("kernel", elastic, {}, 1.0, 1.0))
    for stage, names in (("depth", ("depth",)), ("expand", ("e", "width"))):
        present = tuple(g for g in names if g in groups)
        if not present:
            continue
        if any(len(values[g]) > 2 for g in present):
            top = {g: tuple(sorted(values[g])[-2:]) for g in present if len(values[g]) > 2}
            plan.append((f"{stage}-1", (*elastic, *present), top, 0.5, 0.3))
        elastic = (*elastic, *present)
        plan.append((stage, elastic, {}, 1.0, 0.3))
    if len(plan) == 1:
        raise ValueError(
            f"progressive shrinking needs OFA-style dimension groups (k, depth, e, width); "
            f"space {space.name!r} has groups {sorted(groups)}. Pass "
            "options={'phases': [...]} with Phase(name, epochs, lr, elastic=(group, ...)) "
            "naming groups of this space, or use the 'sandwich' or 'spos' schedule"
        )
    total_weight = sum(w for *_, w, _ in plan)
    return [
        Phase(name, max(1, round(epochs * w / total_weight)), lr * m, el, ch)
        for name, el, ch, w, m in plan
    ]

"""Supernet training: schedules, BN recalibration, exactly resumable checkpoints, DDP.

Schedules, each picked by name with its own options: the sandwich rule with in-place
distillation (BigNAS, Yu et al., ECCV 2020; AttentiveNAS, Wang et al., CVPR 2021), progressive
shrinking (Once-for-All, Cai et al., ICLR 2020) and uniform single-path sampling (SPOS, Guo et
al., ECCV 2020). `train_supernet` writes checkpoints into a run folder (safetensors for tensors,
JSON for everything else: nothing is unpickled) and, started again on the same folder,
continues exactly where the last checkpoint left off. Under torchrun it trains with
DistributedDataParallel: every rank samples the same subnets (one seeded sampler per run) and
takes its own slice of each global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from nas.core.elastic import Supernet, resize_to
from nas.core.files import CheckpointError, sha256_file, write_json_atomic
from nas.core.space import Arch, SearchSpace

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEDULES",
    "CheckpointError",
    "DistInfo",
    "Phase",
    "ProgressiveOptions",
    "SPOSOptions",
    "SandwichOptions",
    "SupernetConfig",
    "TrainResult",
    "bn_stats_preserved",
    "init_distributed",
    "load_supernet",
    "make_config",
    "recalibrate_bn",
    "soft_cross_entropy",
    "train_supernet",
]

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("sgd", "adamw")

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
        for name in ("warmup_steps", "checkpoint_every", "seed"):
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


# --------------------------------------------------------------------------------------------
# Phases and arch sampling
# --------------------------------------------------------------------------------------------


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


class ArchSampler:
    """Samples archs of a supernet's space with only some dimension groups elastic."""

    def __init__(self, supernet: Supernet, phase: Phase) -> None:
        self.space = supernet.space
        self.phase = phase
        dims = self.space.dimensions()
        groups: dict[str, list[str]] = {}
        for k in dims:
            groups.setdefault(dim_group(k), []).append(k)
        named = set(phase.elastic or ()) | set(phase.choices)
        unknown = sorted(named - set(groups))
        if unknown:
            raise ValueError(
                f"phase {phase.name!r} names dimension group(s) {unknown} that space "
                f"{self.space.name!r} does not have; its groups: {sorted(groups)}"
            )
        for g, allowed in phase.choices.items():
            for k in groups[g]:
                bad = [v for v in allowed if v not in dims[k]]
                if bad or not allowed:
                    raise ValueError(
                        f"phase {phase.name!r}: choices for group {g!r} must be a non-empty "
                        f"subset of {list(dims[k].values)}, got {list(allowed)}"
                    )
        self._allowed: dict[str, tuple[Any, ...] | None] = {}
        largest = supernet.largest_arch()
        smallest = supernet.smallest_arch()
        self.largest: Arch = dict(largest)
        self.smallest: Arch = {}
        for k, c in dims.items():
            g = dim_group(k)
            if phase.elastic is not None and g not in phase.elastic:
                self._allowed[k] = (largest[k],)
                self.smallest[k] = largest[k]
            elif g in phase.choices:
                allowed = tuple(c.coerce(v) for v in phase.choices[g])
                self._allowed[k] = allowed
                self.smallest[k] = (
                    smallest[k]
                    if smallest[k] in allowed
                    else min(allowed)
                    if c.is_ordinal
                    else allowed[0]
                )
            else:
                self._allowed[k] = None
                self.smallest[k] = smallest[k]

    @property
    def is_elastic(self) -> bool:
        """Whether any dimension has more than one allowed value in this phase."""
        return any(allowed is None or len(allowed) > 1 for allowed in self._allowed.values())

    def sample(self, rng: np.random.Generator) -> Arch:
        arch = self.space.sample(rng)
        for k, allowed in self._allowed.items():
            if allowed is not None:
                arch[k] = (
                    allowed[int(rng.integers(len(allowed)))] if len(allowed) > 1 else allowed[0]
                )
        return arch


# --------------------------------------------------------------------------------------------
# Losses and schedules
# --------------------------------------------------------------------------------------------


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of the student's logits against the teacher's soft labels (N x C each),
    scaled by T^2 (Hinton et al., 2015); the gradient equals that of the KL divergence."""
    t = F.softmax(teacher / temperature, dim=1)  # N x C
    return -(t * F.log_softmax(student / temperature, dim=1)).sum(1).mean() * temperature**2


@dataclass
class _Ctx:
    """What a schedule needs during one step."""

    supernet: Supernet
    model: nn.Module  # the supernet, or its DDP wrapper
    config: SupernetConfig
    teacher: nn.Module | None

    def forward(self, arch: Arch, x: Tensor) -> Tensor:
        self.supernet.set_arch(arch)
        x = resize_to(x, self.supernet.space.input_shape(arch)[1:])  # N x C x H_a x W_a
        return self.model(x)  # N x classes

    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    def sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP reduces gradients only in the step's last backward pass (forward included)."""
        if isinstance(self.model, DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()


class _Schedule:
    name: ClassVar[str] = ""

    def __init__(self, options: Any) -> None:
        self.options = options

    def phases(self, config: SupernetConfig, supernet: Supernet) -> list[Phase]:
        return [Phase("train", config.epochs, config.lr)]

    def plan(self, sampler: ArchSampler, rng: np.random.Generator, phase_index: int) -> list[Arch]:
        raise NotImplementedError

    def micro_step(
        self, ctx: _Ctx, archs: list[Arch], x: Tensor, y: Tensor, scale: float, last: bool
    ) -> float:
        """Forward and backward every subnet of the step on one micro-batch; the summed loss."""
        raise NotImplementedError

    def wants_teacher(self, phase_index: int) -> bool:
        return False


class _Sandwich(_Schedule):
    name = "sandwich"
    options: SandwichOptions

    def plan(self, sampler: ArchSampler, rng: np.random.Generator, phase_index: int) -> list[Arch]:
        randoms = [sampler.sample(rng) for _ in range(self.options.n_random)]
        return [sampler.largest, sampler.smallest, *randoms]

    def micro_step(
        self, ctx: _Ctx, archs: list[Arch], x: Tensor, y: Tensor, scale: float, last: bool
    ) -> float:
        o = self.options
        total = 0.0
        soft: Tensor | None = None
        for i, arch in enumerate(archs):
            with ctx.sync(last and i == len(archs) - 1):
                logits = ctx.forward(arch, x)  # N x classes
                if soft is None:
                    loss = ctx.ce(logits, y)
                    soft = logits.detach()
                else:
                    loss = o.kd_weight * soft_cross_entropy(logits, soft, o.kd_temperature)
                    if o.student_ce_weight:
                        loss = loss + o.student_ce_weight * ctx.ce(logits, y)
                (loss * scale).backward()
            total += float(loss.detach())
        return total


class _SPOS(_Schedule):
    name = "spos"
    options: SPOSOptions

    def plan(self, sampler: ArchSampler, rng: np.random.Generator, phase_index: int) -> list[Arch]:
        return [sampler.sample(rng) for _ in range(self.options.n_subnets)]

    def micro_step(
        self, ctx: _Ctx, archs: list[Arch], x: Tensor, y: Tensor, scale: float, last: bool
    ) -> float:
        total = 0.0
        for i, arch in enumerate(archs):
            with ctx.sync(last and i == len(archs) - 1):
                loss = ctx.ce(ctx.forward(arch, x), y)
                (loss * scale).backward()
            total += float(loss.detach())
        return total


class _Progressive(_Schedule):
    name = "progressive"
    options: ProgressiveOptions

    def phases(self, config: SupernetConfig, supernet: Supernet) -> list[Phase]:
        if self.options.phases is None:
            return progressive_phases(supernet.space, config.epochs, config.lr)
        phases = [_as_phase(p, i) for i, p in enumerate(self.options.phases)]
        if not phases:
            raise ValueError("option phases must list at least one phase, got an empty list")
        return phases

    def wants_teacher(self, phase_index: int) -> bool:
        return phase_index > 0 and self.options.kd_weight > 0

    def plan(self, sampler: ArchSampler, rng: np.random.Generator, phase_index: int) -> list[Arch]:
        if not sampler.is_elastic:
            return [sampler.largest]  # nothing elastic: the full net, once
        return [sampler.sample(rng) for _ in range(self.options.n_subnets)]

    def micro_step(
        self, ctx: _Ctx, archs: list[Arch], x: Tensor, y: Tensor, scale: float, last: bool
    ) -> float:
        o = self.options
        total = 0.0
        targets: dict[tuple[int, ...], Tensor] = {}
        for i, arch in enumerate(archs):
            with ctx.sync(last and i == len(archs) - 1):
                logits = ctx.forward(arch, x)  # N x classes
                loss = ctx.ce(logits, y)
                if ctx.teacher is not None:
                    size = ctx.supernet.space.input_shape(arch)[1:]
                    if size not in targets:
                        with torch.no_grad():
                            targets[size] = ctx.teacher(resize_to(x, size))  # N x classes
                    loss = loss + o.kd_weight * soft_cross_entropy(
                        logits, targets[size], o.kd_temperature
                    )
                (loss * scale).backward()
            total += float(loss.detach())
        return total


_SCHEDULE_CLASSES: dict[str, type[_Schedule]] = {
    "sandwich": _Sandwich,
    "progressive": _Progressive,
    "spos": _SPOS,
}


# --------------------------------------------------------------------------------------------
# Batch-norm recalibration
# --------------------------------------------------------------------------------------------


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_buffers(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> list[dict[str, Tensor]]:
    return [{n: b.detach().clone() for n, b in bn.named_buffers(recurse=False)} for bn in bns]


def _restore_bn_buffers(
    bns: Sequence[nn.modules.batchnorm._BatchNorm], saved: Sequence[dict[str, Tensor]]
) -> None:
    with torch.no_grad():
        for bn, buffers in zip(bns, saved, strict=True):
            for name, value in buffers.items():
                getattr(bn, name).copy_(value)


@contextlib.contextmanager
def bn_stats_preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block, then put every batch-norm buffer of `model` back as it was.

    For recalibrating a subnet in place inside a supernet whose statistics must survive.
    """
    bns = _batch_norms(model)
    saved = _bn_buffers(bns)
    try:
        yield model
    finally:
        _restore_bn_buffers(bns, saved)


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    max_batches: int | None = None,
    input_size: Sequence[int] | None = None,
) -> int:
    """Re-estimate the batch-norm running statistics of `model` on `batches`; return how many
    batches were used.

    Each statistic becomes the exact mean over the batches of the per-batch mean and (unbiased)
    variance, as OFA's `set_running_statistics`. Only the running statistics change (for an
    elastic batch norm in a supernet only its active channels); on success they keep their new
    values, while the momentum and every module's train / eval mode are restored in `finally`,
    and on an error the statistics are put back too. `batches` yields images (N x C x H x W) or
    (images, labels, ...) tuples; `input_size` resizes the images (elastic resolution).
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be None or >= 1, got {max_batches}")
    bns = _batch_norms(model)
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    saved = _bn_buffers(bns)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    ok = False
    n = 0
    try:
        for bn in bns:
            bn.momentum = None  # cumulative average: the n-th batch gets weight 1/n
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.zero_()
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch if isinstance(batch, Tensor) else batch[0]  # N x C x H x W
                if input_size is not None:
                    x = resize_to(x, input_size)
                model(x.to(device))
                n += 1
                if max_batches is not None and n >= max_batches:
                    break
        if n == 0:
            raise ValueError("recalibrate_bn got no batches; pass at least one batch of images")
        ok = True
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
        if not ok:
            _restore_bn_buffers(bns, saved)
    return n


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); gloo on CPU, nccl on GPU. Without it, one process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def _check_same_archs(archs: list[Arch], device: torch.device) -> None:
    """Every rank must train the same subnets; a cheap all-reduce of a hash checks it."""
    h = zlib.crc32(json.dumps(archs, sort_keys=True).encode())
    t = torch.tensor([h, -h], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != h or int(t[1]) != -h:
        raise RuntimeError(
            "ranks sampled different subnets in one step; every rank must run the same config "
            "(seed) and code"
        )


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _Images:
    """Random access to (images, labels) batches of a dataset, fast for TensorDatasets."""

    def __init__(self, data: Any) -> None:
        train = getattr(data, "train", None)
        if isinstance(train, Dataset):
            data = train  # an ImageDataset: train on its train split
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            data = TensorDataset(*data)
        if not isinstance(data, Dataset):
            raise TypeError(
                "data must be an ImageDataset (its train split is used), a torch Dataset of "
                f"(image, label) pairs or an (images, labels) tuple, got {type(data).__name__}"
            )
        self.dataset = data
        self.tensors = data.tensors if isinstance(data, TensorDataset) else None
        self.n = len(data)  # type: ignore[arg-type]

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self.tensors is not None:
            return self.tensors[0][idx], self.tensors[1][idx]  # B x C x H x W, B
        items = [self.dataset[int(i)] for i in idx]
        return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # n


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    phase: int = 0
    epoch: int = 0  # within the phase
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps done
    images: int = 0
    done: bool = False
    epoch_loss_sum: float = 0.0  # of the steps done in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        out: dict[str, Any] = {}
        for k, v in entries.items():
            if isinstance(v, Tensor):
                name = f"optim.{idx}.{k}"
                tensors[name] = v.detach().cpu().contiguous()
                out[k] = {"tensor": name}
            else:
                out[k] = v
        state[str(idx)] = out
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entries in meta["state"].items():
        state[int(idx)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in entries.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(
    out_dir: Path,
    supernet: Supernet,
    teacher: nn.Module | None,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    rng: np.random.Generator,
    state: _State,
    config: SupernetConfig,
    optimizer_phase: int,
) -> Path:
    """Tensors first (a new file), then the JSON that names them (atomic): a kill at any moment
    leaves the previous checkpoint or the new one, never half of each."""
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in supernet.state_dict().items()
    }
    if teacher is not None:
        tensors.update(
            {f"teacher.{k}": v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
        )
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    name = f"checkpoint-{state.step:08d}.safetensors"
    path = out_dir / name
    tmp = out_dir / (name + ".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(state.step)})
    os.replace(tmp, path)
    meta = {
        "version": CHECKPOINT_VERSION,
        "space": supernet.space.name,
        "supernet": type(supernet).__name__,
        "config": config.to_json(),
        "state": dataclasses.asdict(state),
        "tensors": name,
        "sha256": sha256_file(path),
        "optimizer": opt_meta,
        "optimizer_phase": optimizer_phase,
        "scheduler": sched.state_dict(),
        "sampler_rng": rng.bit_generator.state,
        "has_teacher": teacher is not None,
    }
    write_json_atomic(out_dir / CHECKPOINT_JSON, _jsonable(meta))
    for old in out_dir.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    with (out_dir / "train_log.jsonl.tmp").open("w") as f:
        for record in state.history:
            f.write(json.dumps(record) + "\n")
    os.replace(out_dir / "train_log.jsonl.tmp", out_dir / "train_log.jsonl")
    return path


def _read_checkpoint(out_dir: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    meta_path = out_dir / CHECKPOINT_JSON
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{meta_path} has checkpoint version {meta.get('version')!r}; this code reads "
            f"version {CHECKPOINT_VERSION}"
        )
    path = out_dir / meta["tensors"]
    if not path.exists():
        raise CheckpointError(f"{meta_path} names {path.name}, which is missing")
    if sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"{path} does not match the checksum recorded in {meta_path}")
    return meta, load_file(str(path))


def _config_differences(stored: Mapping[str, Any], config: SupernetConfig) -> list[str]:
    now = config.to_json()
    ignore = {"checkpoint_every"}
    return [
        f"{k}: stored {stored.get(k)!r}, given {now.get(k)!r}"
        for k in sorted(set(now) | set(stored))
        if k not in ignore and _jsonable(stored.get(k)) != _jsonable(now.get(k))
    ]


def load_supernet(
    space: SearchSpace,
    run_dir: str | os.PathLike[str],
    supernet: Supernet | None = None,
    map_location: str | torch.device = "cpu",
) -> Supernet:
    """The supernet of the latest checkpoint in `run_dir` (weights only; no unpickling)."""
    found = _read_checkpoint(Path(run_dir))
    if found is None:
        raise CheckpointError(f"no {CHECKPOINT_JSON} in {run_dir}: train with train_supernet first")
    meta, tensors = found
    if meta["space"] != space.name:
        raise CheckpointError(
            f"{run_dir} holds a supernet of space {meta['space']!r}, not {space.name!r}"
        )
    net = supernet if supernet is not None else _as_supernet(space.supernet())
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return net.to(map_location)


def _as_supernet(module: nn.Module) -> Supernet:
    if not isinstance(module, Supernet):
        raise TypeError(
            f"space.supernet() must return a nas.core.elastic.Supernet, got {type(module).__name__}"
        )
    return module


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train_supernet` returns; `history` has one record per epoch (phase, epoch, step,
    loss summed over the step's subnets and averaged over the epoch's steps, lr, images/s)."""

    supernet: Supernet
    out_dir: Path
    step: int
    completed: bool
    history: list[dict[str, Any]]
    #: images per second over the steps this call ran (global batch, all ranks)
    images_per_s: float
    wall_s: float


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _make_optimizer(model: nn.Module, config: SupernetConfig, lr: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(
        groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
    )


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def train_supernet(
    space: SearchSpace,
    data: Any,
    out_dir: str | os.PathLike[str],
    config: SupernetConfig | Mapping[str, Any] | None = None,
    *,
    supernet: Supernet | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train the supernet of `space` on `data`, checkpointing into `out_dir`; resume if there.

    `data` is an `ImageDataset` (its train split), a Dataset of (image, label) or an
    (images, labels) pair of tensors. `config` and `overrides` make the `SupernetConfig` (e.g.
    `schedule="spos", epochs=3, options={"n_random": 3}`). A checkpoint (weights, optimizer,
    LR schedule, sampler RNG, phase / epoch / batch position, history) is written every
    `checkpoint_every` steps, at each epoch's end and when `max_steps` (a global step count)
    stops the call early; calling again on the same folder continues from it exactly, and a
    folder holding a different config is refused. Under torchrun (WORLD_SIZE > 1) the process
    group is joined and the supernet wrapped in DistributedDataParallel.
    """
    cfg = make_config(config, **overrides)
    schedule = _SCHEDULE_CLASSES[cfg.schedule](cfg.schedule_options())
    info = init_distributed()
    if device is None:
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    images = _Images(data)
    global_batch = cfg.batch_size * cfg.accumulate * info.world_size
    steps_per_epoch = images.n // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the train set has {images.n} images, fewer than one global batch of {global_batch} "
            f"(batch_size {cfg.batch_size} x accumulate {cfg.accumulate} x world size "
            f"{info.world_size}); lower batch_size"
        )

    if supernet is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            supernet = _as_supernet(space.supernet())
    net = _as_supernet(supernet)
    if net.space is not space and net.space.name != space.name:
        raise ValueError(f"the supernet is of space {net.space.name!r}, not {space.name!r}")
    net.to(device)
    phases = schedule.phases(cfg, net)
    samplers = [ArchSampler(net, p) for p in phases]  # validates every phase up front

    state = _State()
    rng = np.random.default_rng(cfg.seed)
    teacher: nn.Module | None = None
    found = _read_checkpoint(out) if out.exists() else None
    loaded_opt: tuple[dict[str, Any], dict[str, Any], int] | None = None
    if found is not None:
        meta, tensors = found
        if not resume:
            raise CheckpointError(
                f"{out} already holds a checkpoint (step {meta['state']['step']}); pass "
                "resume=True to continue it or choose a new folder"
            )
        diffs = _config_differences(meta["config"], cfg)
        if diffs or meta["space"] != space.name:
            raise CheckpointError(
                f"{out} holds a run of space {meta['space']!r} with a different config: "
                + "; ".join(diffs or [f"space: stored {meta['space']!r}, given {space.name!r}"])
                + ". Use a new folder, or the stored config to resume"
            )
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state = _State(**meta["state"])
        rng.bit_generator.state = meta["sampler_rng"]
        torch.set_rng_state(tensors["torch_rng"])
        if meta["has_teacher"]:
            teacher = space.build(samplers[0].largest).to(device)
            teacher.load_state_dict(
                {k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")}
            )
            teacher.eval().requires_grad_(False)
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        loaded_opt = (
            _unflatten_optimizer(meta["optimizer"], opt_tensors),
            meta["scheduler"],
            int(meta["optimizer_phase"]),
        )
        logger.info(
            "resuming %s at step %d (phase %d, epoch %d, batch %d)",
            out,
            state.step,
            state.phase,
            state.epoch,
            state.batch,
        )

    model: nn.Module = net
    if info.world_size > 1:
        model = DistributedDataParallel(
            net,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,  # a subnet leaves the other blocks' weights unused
        )
    total_steps = sum(p.epochs for p in phases) * steps_per_epoch
    epoch_offsets = np.cumsum([0] + [p.epochs for p in phases]).tolist()
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not (progress and info.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    images_run, train_time = 0, 0.0
    stopped = max_steps is not None and state.step >= max_steps
    try:
        while state.phase < len(phases) and not stopped:
            pi = state.phase
            phase, sampler = phases[pi], samplers[pi]
            if schedule.wants_teacher(pi) and teacher is None:
                teacher = net.export(sampler.largest).eval().requires_grad_(False)
            opt = _make_optimizer(net, cfg, phase.lr)
            warmup = cfg.warmup_steps if pi == 0 else 0
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, _lr_lambda(phase.epochs * steps_per_epoch, warmup, cfg.min_lr_ratio)
            )
            if loaded_opt is not None and loaded_opt[2] == pi:
                opt.load_state_dict(loaded_opt[0])
                sched.load_state_dict(loaded_opt[1])
            loaded_opt = None
            ctx = _Ctx(net, model, cfg, teacher)
            bar.set_description(phase.name)
            while state.phase == pi and not stopped:
                net.train()
                order = _epoch_order(images.n, cfg.seed, epoch_offsets[pi] + state.epoch)
                epoch_images, epoch_time = 0, 0.0
                while state.batch < steps_per_epoch:
                    t0 = time.perf_counter()
                    idx = order[state.batch * global_batch : (state.batch + 1) * global_batch]
                    archs = schedule.plan(sampler, rng, pi)
                    if info.world_size > 1:
                        _check_same_archs(archs, device)
                    opt.zero_grad(set_to_none=True)
                    loss = 0.0
                    for m in range(cfg.accumulate):
                        j = info.rank * cfg.accumulate + m  # this rank's m-th micro-batch
                        x, y = images.batch(idx[j * cfg.batch_size : (j + 1) * cfg.batch_size])
                        loss += (
                            schedule.micro_step(
                                ctx,
                                archs,
                                x.to(device, non_blocking=True),  # B x C x H x W
                                y.to(device, non_blocking=True),  # B
                                1.0 / cfg.accumulate,
                                last=m == cfg.accumulate - 1,
                            )
                            / cfg.accumulate
                        )
                    if cfg.grad_clip_norm is not None:
                        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip_norm)
                    opt.step()
                    sched.step()
                    dt = time.perf_counter() - t0
                    state.batch += 1
                    state.step += 1
                    state.images += global_batch
                    state.epoch_loss_sum += loss
                    epoch_images += global_batch
                    epoch_time += dt
                    images_run += global_batch
                    train_time += dt
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{global_batch / dt:.0f}")
                    stop = max_steps is not None and state.step >= max_steps
                    end_of_epoch = state.batch == steps_per_epoch
                    if end_of_epoch:
                        record = {
                            "phase": phase.name,
                            "epoch": state.epoch,
                            "step": state.step,
                            "loss": state.epoch_loss_sum / steps_per_epoch,
                            "lr": float(sched.get_last_lr()[0]),
                            "images_per_s": epoch_images / max(epoch_time, 1e-9),
                        }
                        state.history.append(record)
                        logger.info("phase %s epoch %d: %s", phase.name, state.epoch, record)
                        state.batch = 0
                        state.epoch_loss_sum = 0.0
                        state.epoch += 1
                        if state.epoch == phase.epochs:
                            state.epoch = 0
                            state.phase += 1
                            state.done = state.phase == len(phases)
                    if info.is_main and (
                        end_of_epoch
                        or stop
                        or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
                    ):
                        _save_checkpoint(out, net, teacher, opt, sched, rng, state, cfg, pi)
                    if stop and not state.done:
                        stopped = True
                    if stop or end_of_epoch:
                        break
    finally:
        bar.close()
    if info.world_size > 1:
        dist.barrier()
    return TrainResult(
        supernet=net,
        out_dir=out,
        step=state.step,
        completed=state.done,
        history=list(state.history),
        images_per_s=images_run / train_time if train_time > 0 else 0.0,
        wall_s=time.perf_counter() - t_start,
    )

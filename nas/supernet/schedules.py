"""Training schedules: which subnets a step trains and how (the sandwich rule with in-place
distillation, BigNAS, Yu et al., ECCV 2020 and AttentiveNAS, Wang et al., CVPR 2021; progressive
shrinking, Once-for-All, Cai et al., ICLR 2020; uniform single-path sampling, SPOS, Guo et al.,
ECCV 2020), and the arch sampler each phase draws from."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from nas.core.elastic import Supernet, resize_to
from nas.core.space import Arch
from nas.supernet.config import (
    Phase,
    ProgressiveOptions,
    SandwichOptions,
    SPOSOptions,
    SupernetConfig,
    _as_phase,
    dim_group,
    progressive_phases,
)
from nas.supernet.device import Precision

__all__ = ["ArchSampler", "soft_cross_entropy"]


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
    precision: Precision = field(default_factory=Precision)

    def forward(self, arch: Arch, x: Tensor) -> Tensor:
        """The subnet's logits, in fp32 (the forward runs under the precision's autocast)."""
        self.supernet.set_arch(arch)
        x = resize_to(x, self.supernet.space.input_shape(arch)[1:])  # N x C x H_a x W_a
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            logits: Tensor = self.model(x)  # N x classes
        return logits.float()

    def backward(self, loss: Tensor) -> None:
        self.precision.backward(loss)

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
                ctx.backward(loss * scale)
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
                ctx.backward(loss * scale)
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
                        with torch.no_grad(), ctx.precision.autocast():
                            targets[size] = ctx.teacher(resize_to(x, size)).float()  # N x C
                    loss = loss + o.kd_weight * soft_cross_entropy(
                        logits, targets[size], o.kd_temperature
                    )
                ctx.backward(loss * scale)
            total += float(loss.detach())
        return total


_SCHEDULE_CLASSES: dict[str, type[_Schedule]] = {
    "sandwich": _Sandwich,
    "progressive": _Progressive,
    "spos": _SPOS,
}

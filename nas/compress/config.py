"""The chain's settings: its steps and their order, and every step's configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from nas.compress.distill import FinetuneConfig, KDConfig
from nas.compress.prune import PruneConfig
from nas.compress.qat import QATConfig

__all__ = [
    "DEFAULT_STEPS",
    "FORMATS",
    "STEPS",
    "ChainConfig",
    "ExportConfig",
    "check_steps",
]

STEPS: tuple[str, ...] = ("distill", "prune", "ptq", "qat", "export")
"""Every step, in the only order they run in."""
DEFAULT_STEPS: tuple[str, ...] = ("distill", "prune", "qat", "export")
FORMATS: tuple[str, ...] = ("pte", "onnx", "tflite")


def check_steps(steps: Sequence[str]) -> list[str]:
    """``steps`` stripped of blanks, or a ValueError unless they are distinct and in order."""
    steps = [s.strip() for s in steps if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ValueError(
            f"unknown or no compression step(s) {unknown or steps}; valid steps, in "
            f"order: {list(STEPS)}"
        )
    order = [STEPS.index(s) for s in steps]
    if order != sorted(set(order)):
        raise ValueError(
            f"compression steps must be distinct and in the order {list(STEPS)}; got {steps}"
        )
    return steps


@dataclass(frozen=True)
class ExportConfig:
    """What the export step writes and checks.

    ``formats`` among ``pte``, ``onnx``, ``tflite`` (optional extra). ``models="all"`` exports the
    model of every finished step (fp32, pruned fp32, PTQ int8, QAT int8), ``"final"`` only the
    last fp32 and the last int8 model. ``ort_int8`` adds ONNX Runtime's static int8 of each fp32
    model exported. Parity runs over ``parity_images`` test images (None: all) in the artifact's
    runtime with ``threads`` threads. Each artifact is timed on every device of the chain whose
    runtime runs it, with that device's threads, for at least ``timing_s`` seconds and 200 runs
    after 10 warm-up runs (the fastest of thousands of runs of a sub-millisecond model).
    """

    formats: tuple[str, ...] = ("pte", "onnx")
    models: str = "all"
    ort_int8: bool = True
    parity_images: int | None = None
    calibration_images: int = 256
    threads: int = 1
    time_artifacts: bool = True
    timing_s: float = 0.5

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(
                f"ExportConfig.formats must be a non-empty subset of {FORMATS}; got "
                f"{self.formats!r}"
            )
        if self.models not in ("all", "final"):
            raise ValueError(f"ExportConfig.models must be 'all' or 'final'; got {self.models!r}")
        if self.parity_images is not None and self.parity_images < 1:
            raise ValueError(
                f"ExportConfig.parity_images must be None or >= 1; got {self.parity_images!r}"
            )
        if not self.timing_s > 0:
            raise ValueError(f"ExportConfig.timing_s must be > 0; got {self.timing_s!r}")
        if self.calibration_images < 1 or self.threads < 1:
            raise ValueError(
                "ExportConfig.calibration_images and threads must be >= 1; got "
                f"{self.calibration_images!r} and {self.threads!r}"
            )


@dataclass(frozen=True)
class ChainConfig:
    """Settings of every step. ``to_dict`` / ``from_dict`` round-trip through JSON.

    PTQ quantizes with QAT's weight scheme (``qat.per_channel``, ``qat.weight_bits``), so the
    two int8 rows differ only in training.

    ``bn_calibration_images``: a subnet taken from a supernet (the student and the teacher when
    they come from an ``arch -> nn.Module`` callable) has its batch-norm statistics re-estimated
    on this many training images (a seeded subset, batches of 128), as the search scored it:
    the statistics a weight-sharing supernet carries belong to no single subnet. 0 skips it.
    """

    distill: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=3.0, lr=0.02))
    kd: KDConfig = field(default_factory=KDConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    ptq_images: int = 512
    qat: QATConfig = field(default_factory=QATConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval_batch_size: int = 256
    bn_calibration_images: int = 512

    def __post_init__(self) -> None:
        if not (isinstance(self.bn_calibration_images, int) and self.bn_calibration_images >= 0):
            raise ValueError(
                "ChainConfig.bn_calibration_images must be an int >= 0 (0: no recalibration); "
                f"got {self.bn_calibration_images!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainConfig:
        """Build from a (possibly partial) nested mapping; unknown keys are an error."""
        return _from_dict(cls, data, "ChainConfig")


_T = TypeVar("_T")


def _from_dict(cls: type[_T], data: Mapping[str, Any], where: str, base: Any = None) -> _T:
    """``cls`` from a (partial) mapping. Keys left out keep the values of ``base`` (default:
    ``cls()``), so ``{"qat": {"train": {"epochs": 1}}}`` changes QAT's epochs and keeps QAT's
    own learning rate, not the plain ``FinetuneConfig`` default."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping; got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    if base is None and _has_defaults(cls):
        base = cls()
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(base, name) if base is not None else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}", default)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )

"""The compression chain: distill -> prune -> (PTQ) -> QAT -> export, resumable, one report.

Each step reads the previous step's model, writes its own model (safetensors + JSON, see
:mod:`nas.compress.checkpoint`), its metrics and one or more report rows (test accuracy, MACs,
parameters, file and weight bytes, latency measured per device, predicted latency), so the
table shows what each step bought and what it cost. The folder of a chain is
``<run_dir>/compress/<arch digest>/``, one subfolder per step; a step is finished when its
``done.json`` exists, and it is reused on the next run when its *fingerprint* (its settings, the
fingerprint of the step before, the arch, the data and the seed) is unchanged. So a second run
resumes after the last finished step, and changing a step's settings reruns that step and every
later one. A finished step whose checkpoint is corrupt fails with :class:`CheckpointError`
rather than being recomputed behind the user's back.

The chain takes objects, never names (DESIGN.md): a space and an arch, a data set, a student
(an ``nn.Module`` or an ``arch -> nn.Module`` callable such as a supernet's ``export``), a
teacher, devices (anything with ``name`` and ``measure_module(module, input_shape, dtype,
calibration)``) and a latency predictor (see :func:`predicted_latency_ms`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from nas.backends import (
    check_parity,
    convert,
    export_onnx,
    export_pte,
    export_tflite,
    has_vnni,
    min_latency_ms,
    open_runner,
    quantize_onnx_static,
    set_executorch_threads,
)
from nas.compress.checkpoint import CheckpointError, load_model, save_model
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    distill_model,
    evaluate_accuracy,
    extract_subnet,
    largest_arch,
    predict_logits,
)
from nas.compress.prune import PruneConfig, macs_params, prune_model
from nas.compress.ptq import load_quantized, ptq, save_quantized
from nas.compress.qat import QATConfig, fp32_twin, train_qat
from nas.compress.sizes import artifact_contents
from nas.core.layers import trace_layer_specs
from nas.supernet import recalibrate_bn

__all__ = [
    "DEFAULT_STEPS",
    "STEPS",
    "ChainConfig",
    "ChainResult",
    "ExportConfig",
    "LatencyDevice",
    "ReportRow",
    "chain_dir",
    "check_steps",
    "parse_arch_key",
    "predicted_latency_ms",
    "read_report",
    "render_report",
    "run_chain",
]

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = ("distill", "prune", "ptq", "qat", "export")
"""Every step, in the only order they run in."""
DEFAULT_STEPS: tuple[str, ...] = ("distill", "prune", "qat", "export")
FORMATS: tuple[str, ...] = ("pte", "onnx", "tflite")
_REPORT_VERSION = 1


class LatencyDevice(Protocol):
    """What the chain needs of a device: a name and a way to time a module."""

    name: str

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = ...,
        calibration: torch.Tensor | None = ...,
    ) -> Any:
        """A measurement with ``latency_ms`` (or a number of ms)."""
        ...


@dataclass(frozen=True)
class ExportConfig:
    """What the export step writes and checks.

    ``formats`` among ``pte``, ``onnx``, ``tflite`` (optional extra). ``models="all"`` exports the
    model of every finished step (fp32, pruned fp32, PTQ int8, QAT int8), ``"final"`` only the
    last fp32 and the last int8 model. ``ort_int8`` adds ONNX Runtime's static int8 of each fp32
    model exported. Parity runs over ``parity_images`` test images (None: all); artifacts are
    timed in their runtime with ``threads`` threads, for at least ``timing_s`` seconds and 200
    runs after 10 warm-up runs (the fastest of thousands of runs of a sub-millisecond model).
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


@dataclass
class ReportRow:
    """One line of the report: a model after a step, or an artifact in its runtime.

    ``accuracy`` is top-1 on the test set (a fraction), in PyTorch for models and in the runtime
    for artifacts. ``size_bytes`` is the file on disk (checkpoint or artifact); ``weights_bytes``
    the weights as deployed (fp32: 4 bytes a parameter; int8: the converted model's tensors).
    ``latency_ms`` holds measured latencies (the headline minimum of
    ``latency_models.measure``) per device (models) or per runtime (artifacts, key
    the registry device of the runtime, ``xnnpack-1t`` or
    ``ort-cpu-1t``); ``speedup`` compares with the step's input on the same device.
    """

    step: str
    model: str
    dtype: str
    format: str = "pytorch"
    accuracy: float | None = None
    macs: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    weights_bytes: int | None = None
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)
    predicted_latency_ms: float | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    source: str = ""
    file: str = ""
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportRow:
        return _from_dict(cls, data, "ReportRow")


@dataclass
class ChainResult:
    """What a chain produced: its folder, report rows, models by step and artifact paths."""

    directory: Path
    rows: list[ReportRow]
    models: dict[str, nn.Module]
    artifacts: list[Path]
    resumed: list[str]

    @property
    def report_path(self) -> Path:
        return self.directory / "report.md"


# -- latency ----------------------------------------------------------------------------------


def _latency_ms(result: Any) -> float:
    if isinstance(result, (int, float)):
        return float(result)
    value = getattr(result, "latency_ms", None)
    if value is None:
        raise TypeError(
            f"a device's measure_module must return a number of ms or an object with latency_ms "
            f"(a latency_models.measure.Measurement); "
            f"got {type(result).__name__}"
        )
    return float(value)


def predicted_latency_ms(
    predictor: Any,
    module: nn.Module,
    input_shape: Sequence[int],
    dtype: str = "fp32",
    *,
    space: Any = None,
    arch: Mapping[str, Any] | None = None,
) -> float | None:
    """A latency model's prediction for ``module``, whatever shape the predictor has.

    Tried in order: ``predict_module(module, input_shape, dtype)``; ``predict_specs(specs)`` on
    the module's traced layer specs (in ``dtype``); ``predict_arch(space, arch)`` when an
    unchanged arch is given and ``dtype`` is fp32; a plain callable ``module -> ms`` for fp32.
    None when the predictor cannot price this module.
    """
    if predictor is None:
        return None
    shape = tuple(int(s) for s in input_shape)
    if hasattr(predictor, "predict_module"):
        return float(predictor.predict_module(module, shape, dtype))
    if hasattr(predictor, "predict_specs"):
        return float(predictor.predict_specs(trace_layer_specs(module, shape, dtype=dtype)))
    if hasattr(predictor, "predict_arch"):
        if space is not None and arch is not None and dtype == "fp32":
            return float(predictor.predict_arch(space, arch))
        return None
    if callable(predictor) and dtype == "fp32":
        return float(predictor(module))
    return None


def _module_latency_fn(predictor: Any, input_shape: Sequence[int]) -> Callable[[nn.Module], float]:
    if predictor is None or not (
        hasattr(predictor, "predict_module")
        or hasattr(predictor, "predict_specs")
        or (callable(predictor) and not hasattr(predictor, "predict_arch"))
    ):
        raise ValueError(
            "pruning to a latency budget needs a latency predictor that prices any module: an "
            "object with predict_module(module, input_shape, dtype) or predict_specs(specs), or "
            f"a callable module -> ms; got {type(predictor).__name__}"
        )

    def fn(m: nn.Module) -> float:
        value = predicted_latency_ms(predictor, m, input_shape)
        assert value is not None
        return value

    return fn


# -- the chain --------------------------------------------------------------------------------


def parse_arch_key(space: Any, key: str) -> dict[str, Any]:
    """The arch whose ``space.key`` is ``key`` ("k=v|k=v|..."; inactive slots "-" take the first
    choice), so a command line can name an arch by the key a study or report shows."""
    dims = space.dimensions()
    arch: dict[str, Any] = {}
    problems = []
    for part in key.strip().split("|"):
        name, sep, text = part.partition("=")
        if not sep or name not in dims:
            problems.append(f"{part!r} is not 'dimension=value' for a dimension of the space")
            continue
        choice = dims[name]
        if text == "-":
            arch[name] = choice.values[0]
            continue
        matches = [v for v in choice.values if str(v) == text]
        if not matches:
            problems.append(f"{name}={text!r} is not one of {list(choice.values)}")
        else:
            arch[name] = matches[0]
    missing = [k for k in dims if k not in arch]
    if missing and not problems:
        problems.append(f"missing dimension(s) {missing}")
    if problems:
        raise ValueError(f"cannot read arch key of space {space.name!r}: " + "; ".join(problems))
    return dict(space.validate(arch))


def chain_dir(run_dir: str | os.PathLike[str], space: Any, arch: Mapping[str, Any]) -> Path:
    """``<run_dir>/compress/<digest of the arch key>``."""
    key = space.key(arch)
    digest = hashlib.sha256(f"{space.name}|{key}".encode()).hexdigest()[:12]
    return Path(run_dir) / "compress" / f"{space.name or 'space'}-{digest}"


def check_steps(steps: Sequence[str]) -> list[str]:
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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _data_digest(data: Any) -> str:
    h = hashlib.sha256(str(getattr(data, "name", "")).encode())
    for split in ("train", "val", "test"):
        x, y = data.split(split).tensors[:2]
        h.update(f"{split}:{tuple(x.shape)}".encode())
        h.update(y.numpy().tobytes())
        h.update(x[:: max(len(x) // 64, 1)].contiguous().numpy().tobytes())
    return h.hexdigest()


def _weights_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a model computes with. For a converted PT2E graph only the tensors
    its graph reads (int8 weights, scales, biases), not the fp32 originals it still holds."""
    tensors: dict[int, torch.Tensor] = {}
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                obj: Any = module
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                if isinstance(obj, torch.Tensor):
                    tensors[id(obj)] = obj
    else:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[id(t)] = t
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


class _Chain:
    """State of one chain run; each ``_step_*`` method returns the rows of its step."""

    def __init__(
        self,
        directory: Path,
        space: Any,
        arch: dict[str, Any],
        data: Any,
        config: ChainConfig,
        build: Callable[[], nn.Module],
        devices: Sequence[LatencyDevice],
        predictor: Any,
        timer: Callable[[Callable[[], object]], float],
        seed: int,
    ) -> None:
        self.dir = directory
        self.space, self.arch, self.data, self.cfg = space, arch, data, config
        self.build = build
        self.devices = list(devices)
        self.predictor = predictor
        self.timer = timer
        self.seed = seed
        self.shape: tuple[int, int, int] = tuple(int(s) for s in space.input_shape(arch))  # type: ignore[assignment]
        self.fp32: dict[str, nn.Module] = {}  # step -> fp32 model, in order
        # step -> (converted int8 model, its fp32 twin, the step that made its fp32 source)
        self.int8: dict[str, tuple[nn.Module, nn.Module, str]] = {}
        self.rows: dict[str, list[ReportRow]] = {}
        self.artifacts: list[Path] = []
        gen = torch.Generator().manual_seed(seed + 7)
        train_x = data.train.tensors[0]
        idx = torch.randperm(len(train_x), generator=gen)[: config.export.calibration_images]
        self.calibration = train_x[idx]  # k x C x H x W, seeded subset of the train split

    # -- helpers ------------------------------------------------------------------------------
    def latest_fp32(self) -> tuple[str, nn.Module]:
        name = next(reversed(self.fp32))
        return name, self.fp32[name]

    def accuracy(self, module: nn.Module) -> float:
        return evaluate_accuracy(module, self.data.test, self.cfg.eval_batch_size)

    def measure(self, module: nn.Module, dtype: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for device in self.devices:
            name = str(getattr(device, "name", type(device).__name__))
            if dtype not in getattr(device, "dtypes", ("fp32", "int8")):
                continue
            try:
                result = device.measure_module(
                    module,
                    (1, *self.shape),
                    dtype,
                    self.calibration[:64] if dtype == "int8" else None,
                )
                out[name] = _latency_ms(result)
            except Exception as err:  # a runtime failing on one model must not stop the chain
                log.warning(
                    "device %s could not time %s (%s: %s)", name, dtype, type(err).__name__, err
                )
                out[name] = None
        return out

    def model_row(
        self,
        step: str,
        label: str,
        module: nn.Module,
        dtype: str,
        *,
        measure_as: nn.Module | None = None,
        file: Path | None = None,
        pristine: bool = False,
        baseline: ReportRow | None = None,
        notes: str = "",
    ) -> ReportRow:
        fp32_module = measure_as if measure_as is not None else module
        macs, params = macs_params(fp32_module, self.shape)
        latency = self.measure(fp32_module, dtype)
        row = ReportRow(
            step=step,
            model=label,
            dtype=dtype,
            accuracy=self.accuracy(module),
            macs=macs,
            params=params,
            size_bytes=file.stat().st_size if file is not None else None,
            weights_bytes=_weights_bytes(module),
            latency_ms=latency,
            predicted_latency_ms=predicted_latency_ms(
                self.predictor,
                fp32_module,
                self.shape,
                dtype,
                space=self.space if pristine else None,
                arch=self.arch if pristine else None,
            ),
            file=file.name if file is not None else "",
            notes=notes,
        )
        if baseline is not None:
            row.speedup = _speedups(baseline.latency_ms, latency)
        return row

    def baseline_row(self, step_name: str) -> ReportRow | None:
        """The PyTorch row of the model made by ``step_name`` ("input": the student as given)."""
        for rows in self.rows.values():
            for row in rows:
                if row.step == step_name and row.format == "pytorch":
                    return row
        return None

    # -- steps --------------------------------------------------------------------------------
    def step_distill(
        self, d: Path, student: nn.Module, teacher: nn.Module | None
    ) -> list[ReportRow]:
        cfg = self.cfg
        history = distill_model(
            student, teacher, self.data.train, cfg.distill, cfg.kd, seed=self.seed
        )
        path = save_model(
            d / "model.safetensors",
            student,
            info={"step": "distill", "arch": self.arch, "history": history.to_dict()},
        )
        self.fp32["distill"] = student
        note = (
            f"KD alpha={cfg.kd.alpha} T={cfg.kd.temperature}"
            if history.used_teacher
            else "no teacher: trained on labels only"
        )
        note += f"; {history.steps} steps"
        return [
            self.model_row("distill", "fp32", student, "fp32", file=path, pristine=True, notes=note)
        ]

    def step_prune(self, d: Path) -> list[ReportRow]:
        src_name, src = self.latest_fp32()
        model = copy.deepcopy(src)
        latency_fn = None
        if self.cfg.prune.latency_budget_ms is not None:
            latency_fn = _module_latency_fn(self.predictor, self.shape)
        result = prune_model(
            model,
            self.data.train,
            self.cfg.prune,
            input_shape=self.shape,
            latency_fn=latency_fn,
            val=self.data.val,
            seed=self.seed,
        )
        path = save_model(
            d / "model.safetensors",
            result.model,
            info={"step": "prune", "arch": self.arch, "prune": result.to_dict()},
        )
        self.fp32["prune"] = result.model
        baseline = self.baseline_row(src_name)
        if baseline is None:
            baseline = self.model_row(
                src_name, "fp32 (before pruning)", src, "fp32", pristine=src_name == "input"
            )
        notes = (
            f"{result.objective}: {result.base_cost:.4g} -> {result.cost:.4g} "
            f"(target {result.target_cost:.4g}{'' if result.target_met else ', NOT met'}); "
            f"MACs x{result.macs_ratio:.2f}"
        )
        row = self.model_row(
            "prune", "pruned fp32", result.model, "fp32", file=path, baseline=baseline, notes=notes
        )
        slower = [k for k, v in row.speedup.items() if v < 1.02]
        if slower:
            row.notes += f"; NOT FASTER on {', '.join(slower)} (measured)"
            log.warning(
                "the pruned model is not faster on %s (measured speed-up %s)",
                slower,
                {k: round(row.speedup[k], 3) for k in slower},
            )
        rows = [row]
        if self.baseline_row(src_name) is None:
            rows.insert(0, baseline)
        return rows

    def step_ptq(self, d: Path) -> list[ReportRow]:
        src_name, src = self.latest_fp32()
        prepared = ptq(
            src,
            self.data.train.tensors[0],
            self.shape,
            n_images=self.cfg.ptq_images,
            per_channel=self.cfg.qat.per_channel,
            weight_bits=self.cfg.qat.weight_bits,
            seed=self.seed,
        )
        path = save_quantized(
            d / "model.safetensors",
            prepared,
            src,
            self.shape,
            kind="ptq",
            per_channel=self.cfg.qat.per_channel,
            weight_bits=self.cfg.qat.weight_bits,
            info={"step": "ptq", "source": src_name, "arch": self.arch},
        )
        converted = convert(prepared)
        self.int8["ptq"] = (converted, src, src_name)
        return [self._int8_row("ptq", "int8 (PTQ)", converted, src, src_name, path)]

    def step_qat(self, d: Path) -> list[ReportRow]:
        src_name, src = self.latest_fp32()
        teacher = copy.deepcopy(src).eval()
        prepared, history = train_qat(
            src,
            self.data.train,
            self.cfg.qat,
            self.shape,
            teacher=teacher,
            val=self.data.val,
            seed=self.seed,
        )
        twin = fp32_twin(src, prepared)
        path = save_quantized(
            d / "model.safetensors",
            prepared,
            src,
            self.shape,
            kind="qat",
            per_channel=self.cfg.qat.per_channel,
            weight_bits=self.cfg.qat.weight_bits,
            info={
                "step": "qat",
                "source": src_name,
                "arch": self.arch,
                "history": history.to_dict(),
            },
        )
        converted = convert(prepared)
        self.int8["qat"] = (converted, twin, src_name)
        return [
            self._int8_row(
                "qat",
                "int8 (calibrated; QAT not kept)" if history.kept_start else "int8 (QAT)",
                converted,
                twin,
                src_name,
                path,
                notes="; ".join([f"{history.steps} QAT steps", *history.notes]),
            )
        ]

    def _int8_row(
        self,
        step: str,
        label: str,
        converted: nn.Module,
        fp32_src: nn.Module,
        src_name: str,
        path: Path,
        notes: str = "",
    ) -> ReportRow:
        baseline = self.baseline_row(src_name)
        row = self.model_row(
            step,
            label,
            converted,
            "int8",
            measure_as=fp32_src,
            file=path,
            baseline=baseline,
            notes=notes,
        )
        row.source = src_name
        if baseline is not None and baseline.accuracy is not None and row.accuracy is not None:
            drop = 100 * (baseline.accuracy - row.accuracy)
            row.notes = (row.notes + "; " if row.notes else "") + (
                f"accuracy {drop:.2f} points below its fp32 source"
                if drop >= 0
                else f"accuracy {-drop:.2f} points above its fp32 source"
            )
        row.notes += "; checkpoint holds fp32 weights + quantization state (size_bytes)"
        return row

    def step_export(self, d: Path) -> list[ReportRow]:
        ex = self.cfg.export
        fp32_items = list(self.fp32.items())
        int8_items = list(self.int8.items())
        if ex.models == "final":
            fp32_items, int8_items = fp32_items[-1:], int8_items[-1:]
        example = torch.zeros((1, *self.shape))  # 1 x C x H x W: the deployment shape
        test_x, test_y = self.data.test.tensors[:2]
        if ex.parity_images is not None:
            test_x, test_y = test_x[: ex.parity_images], test_y[: ex.parity_images]
        calib = list(self.calibration.split(1))
        jobs: list[tuple[str, str, str, Path, nn.Module, Callable[[], Path]]] = []
        for name, model in fp32_items:
            stem = "pruned" if name == "prune" else name
            if "pte" in ex.formats:
                p = d / f"{stem}-fp32.pte"
                jobs.append((name, "fp32", "pte", p, model, _bind(export_pte, model, example, p)))
            if "onnx" in ex.formats:
                p = d / f"{stem}-fp32.onnx"
                jobs.append((name, "fp32", "onnx", p, model, _bind(export_onnx, model, example, p)))
                if ex.ort_int8:
                    q = d / f"{stem}-int8-ort.onnx"
                    jobs.append(
                        (
                            name,
                            "int8 (ORT static)",
                            "onnx",
                            q,
                            model,
                            _bind(quantize_onnx_static, p, q, calib),
                        )
                    )
            if "tflite" in ex.formats:
                p = d / f"{stem}-fp32.tflite"
                jobs.append(
                    (name, "fp32", "tflite", p, model, _bind(export_tflite, model, example, p))
                )
        for name, (converted, _, _) in int8_items:
            if "pte" in ex.formats:
                p = d / f"{name}-int8.pte"
                jobs.append(
                    (
                        name,
                        f"int8 ({name.upper()})",
                        "pte",
                        p,
                        converted,
                        _bind(export_pte, converted, example, p),
                    )
                )
            if "onnx" in ex.formats:
                p = d / f"{name}-int8.onnx"
                jobs.append(
                    (
                        name,
                        f"int8 ({name.upper()})",
                        "onnx",
                        p,
                        converted,
                        _bind(export_onnx, converted, example, p),
                    )
                )
        rows: list[ReportRow] = []
        threads_before = None
        reference_logits: dict[int, torch.Tensor] = {}  # one PyTorch pass per source model
        try:
            for source, dtype_label, fmt, path, reference, make in jobs:
                t0 = time.perf_counter()
                make()
                export_s = time.perf_counter() - t0
                self.artifacts.append(path)
                if fmt == "pte" and threads_before is None:
                    threads_before = set_executorch_threads(ex.threads)
                runner = open_runner(path, example.shape, ex.threads)
                if id(reference) not in reference_logits:
                    reference_logits[id(reference)] = predict_logits(reference, test_x)
                parity = check_parity(
                    runner,
                    reference,
                    test_x,
                    test_y,
                    reference_logits=reference_logits[id(reference)],
                )
                latency: dict[str, float | None] = {}
                if ex.time_artifacts:
                    latency[_artifact_device(runner.runtime, ex.threads)] = float(
                        self.timer(runner)
                    )
                src_row = self.baseline_row(source)
                macs, params = (src_row.macs, src_row.params) if src_row else (None, None)
                rows.append(
                    ReportRow(
                        step="export",
                        model=dtype_label
                        if dtype_label != "fp32"
                        else ("pruned fp32" if source == "prune" else "fp32"),
                        dtype="int8" if dtype_label.startswith("int8") else "fp32",
                        format=fmt,
                        accuracy=parity.runtime_accuracy,
                        macs=macs,
                        params=params,
                        size_bytes=path.stat().st_size,
                        latency_ms=latency,
                        top1_agreement=parity.top1_agreement,
                        max_abs_logit_diff=parity.max_abs_logit_diff,
                        source=source,
                        file=path.name,
                        notes=f"{parity.n_images} test images; built in {export_s:.1f} s"
                        + self._saturation_note(fmt, dtype_label, parity.top1_agreement),
                    )
                )
                log.info(
                    "%s: accuracy %.4f, agreement %.4f, max |dlogit| %.3g, %d bytes",
                    path.name,
                    parity.runtime_accuracy,
                    parity.top1_agreement,
                    parity.max_abs_logit_diff,
                    path.stat().st_size,
                )
        finally:
            if threads_before is not None:
                set_executorch_threads(threads_before)
        _size_ratios(rows, {k: v[2] for k, v in self.int8.items()}, d)
        return rows

    def _saturation_note(self, fmt: str, dtype_label: str, agreement: float) -> str:
        """Why an int8 ONNX artifact may disagree with its model on this host, and the cure."""
        if (
            fmt != "onnx"
            or dtype_label not in ("int8 (QAT)", "int8 (PTQ)")  # ORT static reduces its range
            or agreement >= 0.99
            or self.cfg.qat.weight_bits != 8
            or has_vnni()
        ):
            return ""
        return (
            "; this CPU lacks VNNI, where ONNX Runtime's int8 kernels saturate with full-range "
            "weights: qat.weight_bits=7 avoids it"
        )


_RUNTIME_DEVICES = {"executorch-xnnpack": "xnnpack", "onnxruntime": "ort-cpu"}
"""Artifact runtimes -> the stem of the same runtime's device name in the latency registry."""


def _artifact_device(runtime: str, threads: int) -> str:
    """The latency column of an artifact timed in ``runtime``: the registry's device name for
    that runtime and thread count (``xnnpack-1t``, ``ort-cpu-1t``), so a model timed as a device
    and an artifact timed in its runtime share one column."""
    return f"{_RUNTIME_DEVICES.get(runtime, runtime)}-{threads}t"


def _bind(fn: Callable[..., Path], *args: Any) -> Callable[[], Path]:
    return lambda: fn(*args)


def _speedups(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float]:
    return {
        k: float(before[k]) / float(v)  # type: ignore[arg-type]
        for k, v in after.items()
        if v and before.get(k)
    }


def _size_ratios(rows: list[ReportRow], int8_sources: Mapping[str, str], directory: Path) -> None:
    """Note each int8 artifact's size as a share of the fp32 artifact, in the same format, of
    the fp32 model it was quantized from: the whole file, and its tensor data alone (what an
    int8 encoding saves before the format's structure and the 32-bit biases and scales it
    keeps: :mod:`nas.compress.sizes`)."""
    fp32 = {(r.source, r.format): r for r in rows if r.dtype == "fp32"}
    for r in rows:
        if r.dtype != "int8" or r.size_bytes is None:
            continue
        ref = fp32.get((int8_sources.get(r.source, r.source), r.format))
        if ref is None or not ref.size_bytes:
            continue
        r.notes += f"; {r.size_bytes / ref.size_bytes:.2f}x the fp32 {r.format} file"
        if r.format in ("pte", "onnx") and r.file and ref.file:
            try:
                mine = artifact_contents(directory / r.file)
                theirs = artifact_contents(directory / ref.file)
            except (ImportError, ValueError, OSError) as err:
                log.debug("no size breakdown for %s: %s", r.file, err)
                continue
            r.notes += (
                f" (tensor data {mine.ratio_to(theirs)['tensors']:.2f}x, of which scales "
                f"{mine.scale_bytes:,} B; structure {mine.structure_bytes:,} B vs "
                f"{theirs.structure_bytes:,} B)"
            )


# -- persistence ------------------------------------------------------------------------------


def _step_dir(root: Path, step: str) -> Path:
    return root / f"{STEPS.index(step) + 1:02d}-{step}"


def _read_done(d: Path) -> dict[str, Any] | None:
    path = d / "done.json"
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}); delete {d} to rerun the step"
        ) from err
    if not isinstance(done, dict) or "fingerprint" not in done:
        raise CheckpointError(f"{path} lacks a fingerprint; delete {d} to rerun the step")
    return done


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_report(directory: str | os.PathLike[str]) -> list[ReportRow]:
    """The rows of a chain's ``report.json``."""
    data = json.loads((Path(directory) / "report.json").read_text())
    return [ReportRow.from_dict(r) for r in data["rows"]]


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render_report(rows: Sequence[ReportRow], title: str = "") -> str:
    """The report as a Markdown table."""
    devices: list[str] = []
    for r in rows:
        for k in r.latency_ms:
            if k not in devices:
                devices.append(k)
    head = [
        "step",
        "model",
        "format",
        "top-1 %",
        "agree %",
        "max dlogit",
        "MACs",
        "params",
        "size bytes",
        "weights bytes",
        *[f"{k} ms" for k in devices],
        "pred. ms",
        "notes",
    ]
    lines = [
        f"# {title}\n" if title else "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r.step,
            r.model,
            r.format,
            _fmt(None if r.accuracy is None else 100 * r.accuracy, ".2f"),
            _fmt(None if r.top1_agreement is None else 100 * r.top1_agreement, ".2f"),
            _fmt(r.max_abs_logit_diff, ".3g"),
            "" if r.macs is None else f"{r.macs:,}",
            "" if r.params is None else f"{r.params:,}",
            "" if r.size_bytes is None else f"{r.size_bytes:,}",
            "" if r.weights_bytes is None else f"{r.weights_bytes:,}",
            *[
                _fmt(r.latency_ms.get(k), ".3f")
                + (f" (x{r.speedup[k]:.2f})" if k in r.speedup else "")
                for k in devices
            ],
            _fmt(r.predicted_latency_ms, ".3f"),
            r.notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line) + "\n"


# -- entry point ------------------------------------------------------------------------------


def run_chain(
    run_dir: str | os.PathLike[str],
    arch: Mapping[str, Any],
    *,
    space: Any,
    data: Any,
    steps: Sequence[str] = DEFAULT_STEPS,
    config: ChainConfig | None = None,
    student: nn.Module | Callable[[Mapping[str, Any]], nn.Module] | None = None,
    teacher: nn.Module | Callable[[Mapping[str, Any]], nn.Module] | str | None = "largest",
    devices: Sequence[LatencyDevice] = (),
    latency_predictor: Any = None,
    timer: Callable[[Callable[[], object]], float] | None = None,
    build: Callable[[], nn.Module] | None = None,
    restart_from: str | None = None,
    seed: int = 0,
) -> ChainResult:
    """Compress one arch of ``space`` into deployable models; resumable (see the module doc).

    Args:
        run_dir: the run folder; the chain writes under ``<run_dir>/compress/``.
        arch: the arch to compress (validated against ``space``).
        space: its search space (``build``, ``input_shape``, ``key``).
        data: an :class:`nas.data.ImageDataset` (train for training and calibration, val for
            pruning's progress, test for every accuracy and parity figure).
        steps: a subsequence of ``("distill", "prune", "ptq", "qat", "export")``.
        config: settings of every step (:class:`ChainConfig`).
        student: the starting model: a module, or an ``arch -> nn.Module`` callable (a supernet's
            ``export``, giving the subnet with inherited weights); default ``space.build(arch)``
            with a fresh, seeded initialisation (so "distill" without a teacher trains from
            scratch).
        teacher: KD teacher of the distill step: a module, an ``arch -> nn.Module`` callable
            (called with the space's largest arch), ``"largest"`` (default: the largest subnet of
            the ``student`` callable when one is given, no teacher otherwise) or None.
        devices: real or emulated devices; every model is timed on each (``measure_module``).
        latency_predictor: see :func:`predicted_latency_ms`; required for a latency budget.
        timer: ``runner -> ms`` for artifacts (default :func:`min_latency_ms`; pass
            ``lambda fn: latency_models.measure.measure(fn).latency_ms`` for the full protocol).
        build: ``() -> nn.Module`` of the plain architecture, used to load checkpoints (default
            ``space.build(arch)``).
        restart_from: rerun this step and every later one even if finished.
        seed: seeds initialisation, batch order, calibration subsets.
    """
    config = config or ChainConfig()
    steps = check_steps(steps)
    if restart_from is not None and restart_from not in steps:
        raise ValueError(f"restart_from must be one of the steps {steps}; got {restart_from!r}")
    arch = dict(space.validate(arch))
    shape = tuple(int(s) for s in space.input_shape(arch))
    if tuple(data.input_shape) != shape:
        raise ValueError(
            f"the data set's images are {tuple(data.input_shape)} but arch "
            f"{space.key(arch)!r} takes {shape}"
        )
    directory = chain_dir(run_dir, space, arch)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(
        directory / "arch.json", {"space": space.name, "key": space.key(arch), "arch": arch}
    )
    builder = build or (lambda: space.build(arch))
    chain = _Chain(
        directory,
        space,
        arch,
        data,
        config,
        builder,
        devices,
        latency_predictor,
        timer
        or functools.partial(min_latency_ms, warmup=10, min_runs=200, max_s=config.export.timing_s),
        seed,
    )

    bn_batches: list[torch.Tensor] = []
    if config.bn_calibration_images > 0:
        # The subset the search's evaluator recalibrates on (nas.supernet.evaluate.SubnetEvaluator with
        # the same seed and count), so the starting point scores as the search scored it.
        train_x = data.train.tensors[0]
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
        bn_batches = list(train_x[pick[: config.bn_calibration_images]].split(128))

    def from_supernet(export: Callable[[Mapping[str, Any]], nn.Module], a: Any) -> nn.Module:
        module = extract_subnet(export, a)
        if bn_batches:
            recalibrate_bn(module, bn_batches)
        return module.eval()

    def make_student() -> nn.Module:
        if isinstance(student, nn.Module):
            return copy.deepcopy(student).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if student is None:
                return builder().eval()
            return from_supernet(student, arch)

    def make_teacher() -> nn.Module | None:
        if teacher is None:
            return None
        if isinstance(teacher, nn.Module):
            return teacher.eval()
        if teacher == "largest":
            if student is None or isinstance(student, nn.Module):
                log.info("no teacher: 'largest' needs a student callable (a supernet's export)")
                return None
            return from_supernet(student, largest_arch(space))
        if isinstance(teacher, str):
            raise ValueError(
                f"teacher must be a module, a callable, 'largest' or None; got {teacher!r}"
            )
        return from_supernet(teacher, largest_arch(space))

    initial = make_student()
    source_fp = _digest(
        {
            "student": _state_digest(initial),
            "arch": space.key(arch),
            "data": _data_digest(data),
            "seed": seed,
            "shape": shape,
        }
    )
    chain.rows["input"] = _input_rows(chain, directory, initial, source_fp, student, bn_batches)
    if "distill" not in steps:
        chain.fp32["input"] = initial
    prev_fp = source_fp
    resumed: list[str] = []
    invalid = False
    teacher_module: nn.Module | None = None
    teacher_fp = ""
    if "distill" in steps:
        teacher_module = make_teacher()
        teacher_fp = _state_digest(teacher_module) if teacher_module is not None else "none"
    for step in steps:
        d = _step_dir(directory, step)
        step_cfg = _step_config(step, config, teacher_fp, chain)
        fp = _digest({"step": step, "config": step_cfg, "prev": prev_fp})
        done = None if (invalid or step == restart_from) else _read_done(d)
        if done is not None and done["fingerprint"] == fp:
            _load_step(chain, step, d, done)
            chain.rows[step] = [ReportRow.from_dict(r) for r in done.get("rows", [])]
            resumed.append(step)
            log.info("step %s: finished earlier, loaded from %s", step, d)
        else:
            if done is not None:
                log.info("step %s: settings or inputs changed since it ran; rerunning", step)
            invalid = True  # this step and every later one run afresh
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            t0 = time.perf_counter()
            log.info("step %s: running", step)
            if step == "distill":
                rows = chain.step_distill(d, initial, teacher_module)
            else:
                rows = getattr(chain, f"step_{step}")(d)
            seconds = time.perf_counter() - t0
            chain.rows[step] = rows
            _write_json(
                d / "done.json",
                {
                    "step": step,
                    "fingerprint": fp,
                    "config": step_cfg,
                    "seconds": seconds,
                    "rows": [r.to_dict() for r in rows],
                },
            )
            log.info("step %s: done in %.1f s", step, seconds)
        prev_fp = fp
        _write_report(chain, steps)
    all_rows = [r for s in ("input", *steps) for r in chain.rows.get(s, [])]
    models: dict[str, nn.Module] = dict(chain.fp32)
    models.update({k: v[0] for k, v in chain.int8.items()})
    if "export" in resumed:
        chain.artifacts = sorted(
            p
            for p in _step_dir(directory, "export").iterdir()
            if p.suffix in (".pte", ".onnx", ".tflite")
        )
    return ChainResult(directory, all_rows, models, chain.artifacts, resumed)


def _step_config(step: str, config: ChainConfig, teacher_fp: str, chain: _Chain) -> Any:
    if step == "distill":
        return {"train": config.distill.to_dict(), "kd": config.kd.to_dict(), "teacher": teacher_fp}
    if step == "prune":
        return {
            "prune": config.prune.to_dict(),
            "predictor": type(chain.predictor).__name__ if chain.predictor is not None else None,
        }
    if step == "ptq":
        return {
            "images": config.ptq_images,
            "per_channel": config.qat.per_channel,
            "weight_bits": config.qat.weight_bits,
        }
    if step == "qat":
        return config.qat.to_dict()
    return {
        "export": asdict(config.export),
        "devices": [getattr(d, "name", "") for d in chain.devices],
    }


def _load_step(chain: _Chain, step: str, d: Path, done: Mapping[str, Any]) -> None:
    if step in ("distill", "prune"):
        model, _ = load_model(d / "model.safetensors", chain.build)
        chain.fp32[step] = model
    elif step in ("ptq", "qat"):
        prepared, fp32_model, info = load_quantized(d / "model.safetensors", chain.build)
        twin = fp32_twin(fp32_model, prepared) if step == "qat" else fp32_model
        chain.int8[step] = (convert(prepared), twin, str(info.get("source", "")))
    elif step == "export":
        missing = [r["file"] for r in done.get("rows", []) if not (d / r["file"]).is_file()]
        if missing:
            raise CheckpointError(
                f"export step {d} is marked finished but its artifacts {missing} are missing; "
                f"delete {d} (or pass restart_from='export') to export again"
            )


def _input_rows(
    chain: _Chain,
    directory: Path,
    initial: nn.Module,
    source_fp: str,
    student: Any,
    bn_batches: Sequence[torch.Tensor],
) -> list[ReportRow]:
    """The starting point's row (test accuracy, MACs, parameters, latency), so that every step's
    gain or loss shows; measured once per starting model and kept in ``00-input/done.json``."""
    d = directory / "00-input"
    fp = _digest(
        {
            "source": source_fp,
            "eval_batch_size": chain.cfg.eval_batch_size,
            "devices": [getattr(dev, "name", "") for dev in chain.devices],
            "version": _REPORT_VERSION,
        }
    )
    done = _read_done(d)
    if done is not None and done["fingerprint"] == fp:
        return [ReportRow.from_dict(r) for r in done.get("rows", [])]
    if student is None:
        label, notes = "fresh fp32", "fresh seeded initialisation (space.build)"
    elif isinstance(student, nn.Module):
        label, notes = "fp32", "the student as given"
    else:
        n = sum(len(b) for b in bn_batches)
        label = "inherited fp32"
        notes = "subnet with inherited weights" + (
            f"; batch norm recalibrated on {n} train images" if n else "; batch norm as inherited"
        )
    row = chain.model_row("input", label, initial, "fp32", pristine=True, notes=notes)
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / "done.json", {"step": "input", "fingerprint": fp, "rows": [row.to_dict()]})
    return [row]


def _write_report(chain: _Chain, steps: Sequence[str]) -> None:
    rows = [r for s in ("input", *steps) for r in chain.rows.get(s, [])]
    title = f"Compression of {chain.space.name} arch {chain.space.key(chain.arch)}"
    _write_json(
        chain.dir / "report.json",
        {
            "version": _REPORT_VERSION,
            "space": chain.space.name,
            "arch_key": chain.space.key(chain.arch),
            "steps": list(steps),
            "config": chain.cfg.to_dict(),
            "rows": [r.to_dict() for r in rows],
        },
    )
    (chain.dir / "report.md").write_text(render_report(rows, title))

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
teacher, devices (:class:`~nas.compress.latency.LatencyDevice`: a name, a runtime, threads,
dtypes and ``measure_module``) and a latency predictor (see :func:`predicted_latency_ms`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.backends import convert, min_latency_ms
from nas.compress.checkpoint import CheckpointError, load_model
from nas.compress.config import DEFAULT_STEPS, STEPS, ChainConfig, check_steps
from nas.compress.distill import extract_subnet, largest_arch
from nas.compress.export import _export_step
from nas.compress.latency import LatencyDevice, _check_devices
from nas.compress.ptq import load_quantized
from nas.compress.qat import fp32_twin
from nas.compress.report import (
    _REPORT_VERSION,
    ChainResult,
    ReportRow,
    _write_json,
    _write_report,
    render_report,
)
from nas.compress.state import _Chain
from nas.compress.steps import _distill_step, _prune_step, _ptq_step, _qat_step
from nas.supernet import recalibrate_bn

# ChainConfig, ReportRow, check_steps and render_report live in config.py and report.py; they
# stay importable from here while nas.app (and tests/nas/app) import them from nas.compress.chain.
__all__ = [
    "ChainConfig",
    "ReportRow",
    "chain_dir",
    "check_steps",
    "render_report",
    "run_chain",
]

log = logging.getLogger(__name__)

_STEP_FUNCTIONS: dict[str, Callable[[_Chain, Path], list[ReportRow]]] = {
    "distill": _distill_step,
    "prune": _prune_step,
    "ptq": _ptq_step,
    "qat": _qat_step,
    "export": _export_step,
}
"""Each step's function: it runs the step in its folder and returns its rows of the report."""


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
        devices: the devices to time on (:class:`~nas.compress.latency.LatencyDevice`): every
            model on each whose ``dtypes`` hold its dtype (``measure_module``), every artifact on
            each whose ``runtime`` runs it (with the device's threads); columns by device name.
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
    devices = _check_devices(devices)
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
    teacher_fp = ""
    if "distill" in steps:
        chain.student, chain.teacher = initial, make_teacher()
        teacher_fp = _state_digest(chain.teacher) if chain.teacher is not None else "none"
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
            rows = _STEP_FUNCTIONS[step](chain, d)
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
        _write_report(
            chain.dir,
            chain.space,
            chain.arch,
            steps,
            chain.cfg,
            [r for s in ("input", *steps) for r in chain.rows.get(s, [])],
        )
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
        "devices": [d.name for d in chain.devices],
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
            "devices": [dev.name for dev in chain.devices],
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


def chain_dir(run_dir: str | os.PathLike[str], space: Any, arch: Mapping[str, Any]) -> Path:
    """``<run_dir>/compress/<digest of the arch key>``."""
    key = space.key(arch)
    digest = hashlib.sha256(f"{space.name}|{key}".encode()).hexdigest()[:12]
    return Path(run_dir) / "compress" / f"{space.name or 'space'}-{digest}"


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

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
dtypes and ``measure_module``) and a latency predictor
(see :func:`~nas.compress.latency.predicted_latency_ms`).
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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.backends import min_latency_ms
from nas.compress.checkpoint import CheckpointError
from nas.compress.config import DEFAULT_STEPS, STEPS, ChainConfig, check_steps
from nas.compress.distill import extract_subnet, largest_arch
from nas.compress.export import _export_step
from nas.compress.latency import LatencyDevice, _check_devices
from nas.compress.report import (
    _REPORT_VERSION,
    ChainResult,
    ReportRow,
    _write_json,
    _write_report,
)
from nas.compress.state import _Chain
from nas.compress.steps import (
    _distill_step,
    _load_step,
    _prune_step,
    _ptq_step,
    _qat_step,
    _step_config,
)
from nas.core.files import read_json
from nas.supernet import Precision, recalibrate_bn

__all__ = ["chain_dir", "run_chain"]

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
    precision: Precision | None = None,
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
        latency_predictor: see :func:`~nas.compress.latency.predicted_latency_ms`; required for
            a latency budget.
        timer: ``runner -> ms`` for artifacts (default :func:`min_latency_ms`; pass
            ``lambda fn: latency_models.measure.measure(fn).latency_ms`` for the full protocol).
        build: ``() -> nn.Module`` of the plain architecture, used to load checkpoints (default
            ``space.build(arch)``).
        restart_from: rerun this step and every later one even if finished.
        seed: seeds initialisation, batch order, calibration subsets.
        precision: the device and autocast of the training steps (``nas.supernet.execution``:
            KD and pruning's fine-tuning under its autocast, QAT in fp32 on its device); the
            models come back to the CPU after each, where quantization, export and timing run.
            Default: fp32 on the CPU.
    """
    config = config or ChainConfig()
    steps = check_steps(steps)
    if restart_from is not None and restart_from not in steps:
        raise ValueError(f"restart_from must be one of the steps {steps}; got {restart_from!r}")
    devices = _check_devices(devices)
    chain = _open_chain(
        run_dir, arch, space, data, config, devices, latency_predictor, timer, build, seed
    )
    chain.precision = precision
    bn_batches = _bn_batches(data, config.bn_calibration_images, seed)
    initial = _make_student(chain, student, bn_batches)
    source_fp = _digest(
        {
            "student": _state_digest(initial),
            "arch": space.key(chain.arch),
            "data": _data_digest(data),
            "seed": seed,
            "shape": chain.shape,
        }
    )
    chain.rows["input"] = _input_rows(chain, initial, source_fp, student, bn_batches)
    teacher_fp = ""
    if "distill" in steps:
        chain.student, chain.teacher = initial, _make_teacher(space, student, teacher, bn_batches)
        teacher_fp = _state_digest(chain.teacher) if chain.teacher is not None else "none"
    else:
        chain.fp32["input"] = initial
    resumed = _run_steps(chain, steps, source_fp, teacher_fp, restart_from)
    return _result(chain, steps, resumed)


def _open_chain(
    run_dir: str | os.PathLike[str],
    arch: Mapping[str, Any],
    space: Any,
    data: Any,
    config: ChainConfig,
    devices: Sequence[LatencyDevice],
    predictor: Any,
    timer: Callable[[Callable[[], object]], float] | None,
    build: Callable[[], nn.Module] | None,
    seed: int = 0,
) -> _Chain:
    """The state of the chain of ``arch``, in its folder (where ``arch.json`` names the arch)."""
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
    return _Chain(
        directory,
        space,
        arch,
        data,
        config,
        build or (lambda: space.build(arch)),
        devices,
        predictor,
        timer
        or functools.partial(min_latency_ms, warmup=10, min_runs=200, max_s=config.export.timing_s),
        seed,
    )


def _bn_batches(data: Any, n: int, seed: int) -> list[torch.Tensor]:
    """Batches of ``n`` seeded train images to recalibrate a subnet's batch norm on (none: 0).

    The subset the search's evaluator recalibrates on (nas.supernet's SubnetEvaluator with the
    same seed and count), so the starting point scores as the search scored it."""
    if n <= 0:
        return []
    train_x = data.train.tensors[0]
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    return list(train_x[pick[:n]].split(128))


def _from_supernet(
    export: Callable[[Mapping[str, Any]], nn.Module], arch: Any, bn_batches: list[torch.Tensor]
) -> nn.Module:
    module = extract_subnet(export, arch)
    if bn_batches:
        recalibrate_bn(module, bn_batches)
    return module.eval()


def _make_student(chain: _Chain, student: Any, bn_batches: list[torch.Tensor]) -> nn.Module:
    """The starting model: a copy of a given module, a subnet of an ``arch -> nn.Module``
    callable, or (None) the plain arch freshly initialised with the chain's seed."""
    if isinstance(student, nn.Module):
        return copy.deepcopy(student).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(chain.seed)
        if student is None:
            return chain.build().eval()
        return _from_supernet(student, chain.arch, bn_batches)


def _make_teacher(
    space: Any, student: Any, teacher: Any, bn_batches: list[torch.Tensor]
) -> nn.Module | None:
    """The distill step's teacher (see :func:`run_chain`'s ``teacher``)."""
    if teacher is None:
        return None
    if isinstance(teacher, nn.Module):
        return teacher.eval()
    if teacher == "largest":
        if student is None or isinstance(student, nn.Module):
            log.info("no teacher: 'largest' needs a student callable (a supernet's export)")
            return None
        return _from_supernet(student, largest_arch(space), bn_batches)
    if isinstance(teacher, str):
        raise ValueError(
            f"teacher must be a module, a callable, 'largest' or None; got {teacher!r}"
        )
    return _from_supernet(teacher, largest_arch(space), bn_batches)


def _run_steps(
    chain: _Chain,
    steps: Sequence[str],
    source_fp: str,
    teacher_fp: str,
    restart_from: str | None,
) -> list[str]:
    """Run or resume each step in turn, writing the report after each; returns the steps
    resumed. A step is resumed when its ``done.json`` holds its fingerprint (its settings and
    the fingerprint of the step before) and no step before it ran afresh."""
    prev_fp = source_fp
    resumed: list[str] = []
    invalid = False
    for step in steps:
        d = _step_dir(chain.dir, step)
        step_cfg = _step_config(step, chain.cfg, teacher_fp, chain)
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
            chain.rows[step] = _run_step(chain, step, d, fp, step_cfg)
        prev_fp = fp
        _write_report(chain.dir, chain.space, chain.arch, steps, chain.cfg, _rows(chain, steps))
    return resumed


def _run_step(chain: _Chain, step: str, d: Path, fp: str, step_cfg: Any) -> list[ReportRow]:
    """Run ``step`` afresh in ``d`` and mark it finished (``done.json``); returns its rows."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    log.info("step %s: running", step)
    rows = _STEP_FUNCTIONS[step](chain, d)
    seconds = time.perf_counter() - t0
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
    return rows


def _result(chain: _Chain, steps: Sequence[str], resumed: list[str]) -> ChainResult:
    """What the chain made: its rows, its models by step (int8: converted) and artifacts."""
    models: dict[str, nn.Module] = dict(chain.fp32)
    models.update({k: v[0] for k, v in chain.int8.items()})
    if "export" in resumed:
        chain.artifacts = sorted(
            p
            for p in _step_dir(chain.dir, "export").iterdir()
            if p.suffix in (".pte", ".onnx", ".tflite")
        )
    return ChainResult(chain.dir, _rows(chain, steps), models, chain.artifacts, resumed)


def _rows(chain: _Chain, steps: Sequence[str]) -> list[ReportRow]:
    """Every row so far: the starting point's, then each step's, in order."""
    return [r for s in ("input", *steps) for r in chain.rows.get(s, [])]


def _input_rows(
    chain: _Chain,
    initial: nn.Module,
    source_fp: str,
    student: Any,
    bn_batches: Sequence[torch.Tensor],
) -> list[ReportRow]:
    """The starting point's row (test accuracy, MACs, parameters, latency), so that every step's
    gain or loss shows; measured once per starting model and kept in ``00-input/done.json``."""
    d = chain.dir / "00-input"
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
    if not (path.exists() or path.is_symlink()):
        return None
    redo = f"delete {d} to rerun the step"
    done: dict[str, Any] = read_json(
        path, "a finished step's record (JSON object)", redo, error=CheckpointError
    )
    if "fingerprint" not in done:
        raise CheckpointError(path, "lacks a fingerprint", redo)
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

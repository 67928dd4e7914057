"""The model steps of the chain (distill, prune, ptq, qat), and what each step is resumed by.

Each step function takes the chain's state and its step folder, runs its step
(:mod:`nas.compress.distill`, :mod:`nas.compress.prune`, :mod:`nas.compress.ptq`,
:mod:`nas.compress.qat`) on the latest model, saves the result there and returns its rows of
the report (the export step is :mod:`nas.compress.export`'s). :func:`_step_config` gives the
settings a step's fingerprint covers; :func:`_load_step` reloads a finished step's models.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nas.backends import convert
from nas.compress.checkpoint import CheckpointError, load_model, save_model
from nas.compress.config import ChainConfig
from nas.compress.distill import distill_model
from nas.compress.latency import _module_latency_fn
from nas.compress.prune import prune_model
from nas.compress.ptq import load_quantized, ptq, save_quantized
from nas.compress.qat import fp32_twin, train_qat
from nas.compress.report import ReportRow
from nas.compress.state import _Chain

__all__: list[str] = []

log = logging.getLogger(__name__)


def _distill_step(chain: _Chain, d: Path) -> list[ReportRow]:
    """Fine-tune the chain's student with KD from its teacher (on labels only without one)."""
    student, teacher = chain.student, chain.teacher
    assert student is not None, "run_chain sets the student before the distill step"
    cfg = chain.cfg
    history = distill_model(
        student,
        teacher,
        chain.data.train,
        cfg.distill,
        cfg.kd,
        seed=chain.seed,
        precision=chain.precision,
    )
    path = save_model(
        d / "model.safetensors",
        student,
        info={"step": "distill", "arch": chain.arch, "history": history.to_dict()},
    )
    chain.fp32["distill"] = student
    note = (
        f"KD alpha={cfg.kd.alpha} T={cfg.kd.temperature}"
        if history.used_teacher
        else "no teacher: trained on labels only"
    )
    note += f"; {history.steps} steps"
    return [
        chain.model_row("distill", "fp32", student, "fp32", file=path, pristine=True, notes=note)
    ]


def _prune_step(chain: _Chain, d: Path) -> list[ReportRow]:
    """Prune the latest fp32 model; its row says when it is not faster where measured."""
    src_name, src = chain.latest_fp32()
    model = copy.deepcopy(src)
    latency_fn = None
    if chain.cfg.prune.latency_budget_ms is not None:
        latency_fn = _module_latency_fn(chain.predictor, chain.shape)
    result = prune_model(
        model,
        chain.data.train,
        chain.cfg.prune,
        input_shape=chain.shape,
        latency_fn=latency_fn,
        val=chain.data.val,
        seed=chain.seed,
        precision=chain.precision,
    )
    path = save_model(
        d / "model.safetensors",
        result.model,
        info={"step": "prune", "arch": chain.arch, "prune": result.to_dict()},
    )
    chain.fp32["prune"] = result.model
    baseline = chain.baseline_row(src_name)
    if baseline is None:
        baseline = chain.model_row(
            src_name, "fp32 (before pruning)", src, "fp32", pristine=src_name == "input"
        )
    notes = (
        f"{result.objective}: {result.base_cost:.4g} -> {result.cost:.4g} "
        f"(target {result.target_cost:.4g}{'' if result.target_met else ', NOT met'}); "
        f"MACs x{result.macs_ratio:.2f}"
    )
    row = chain.model_row(
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
    if chain.baseline_row(src_name) is None:
        rows.insert(0, baseline)
    return rows


def _ptq_step(chain: _Chain, d: Path) -> list[ReportRow]:
    """Post-training int8 of the latest fp32 model."""
    src_name, src = chain.latest_fp32()
    prepared = ptq(
        src,
        chain.data.train.tensors[0],
        chain.shape,
        n_images=chain.cfg.ptq_images,
        per_channel=chain.cfg.qat.per_channel,
        weight_bits=chain.cfg.qat.weight_bits,
        seed=chain.seed,
    )
    path = save_quantized(
        d / "model.safetensors",
        prepared,
        src,
        chain.shape,
        kind="ptq",
        per_channel=chain.cfg.qat.per_channel,
        weight_bits=chain.cfg.qat.weight_bits,
        info={"step": "ptq", "source": src_name, "arch": chain.arch},
    )
    converted = convert(prepared)
    chain.int8["ptq"] = (converted, src, src_name)
    return [chain.int8_row("ptq", "int8 (PTQ)", converted, src, src_name, path)]


def _qat_step(chain: _Chain, d: Path) -> list[ReportRow]:
    """Quantization-aware training of the latest fp32 model, with KD from it."""
    src_name, src = chain.latest_fp32()
    teacher = copy.deepcopy(src).eval()
    prepared, history = train_qat(
        src,
        chain.data.train,
        chain.cfg.qat,
        chain.shape,
        teacher=teacher,
        val=chain.data.val,
        seed=chain.seed,
        device=chain.precision.device if chain.precision is not None else None,
    )
    twin = fp32_twin(src, prepared)
    path = save_quantized(
        d / "model.safetensors",
        prepared,
        src,
        chain.shape,
        kind="qat",
        per_channel=chain.cfg.qat.per_channel,
        weight_bits=chain.cfg.qat.weight_bits,
        info={
            "step": "qat",
            "source": src_name,
            "arch": chain.arch,
            "history": history.to_dict(),
        },
    )
    converted = convert(prepared)
    chain.int8["qat"] = (converted, twin, src_name)
    return [
        chain.int8_row(
            "qat",
            "int8 (calibrated; QAT not kept)" if history.kept_start else "int8 (QAT)",
            converted,
            twin,
            src_name,
            path,
            notes="; ".join([f"{history.steps} QAT steps", *history.notes]),
        )
    ]


def _step_config(step: str, config: ChainConfig, teacher_fp: str, chain: _Chain) -> Any:
    """The settings of ``step`` that its fingerprint covers (changing one reruns the step).

    The autocast precision of a training step is one (it changes the weights); fp32 is left out
    so chains finished before it was recorded keep their fingerprints. The device is not one:
    where a step trains is not what it computes. QAT trains in fp32 whatever it is."""
    autocast = {}
    if chain.precision is not None and chain.precision.name != "fp32":
        autocast = {"precision": chain.precision.name}
    if step == "distill":
        return {
            "train": config.distill.to_dict(),
            "kd": config.kd.to_dict(),
            "teacher": teacher_fp,
            **autocast,
        }
    if step == "prune":
        return {
            "prune": config.prune.to_dict(),
            "predictor": type(chain.predictor).__name__ if chain.predictor is not None else None,
            **autocast,
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
    """Load the models of a finished step from its folder ``d`` into the chain's state."""
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
                d,
                f"the export step is marked finished but its artifacts {missing} are missing",
                f"delete {d} (or pass restart_from='export') to export again",
            )

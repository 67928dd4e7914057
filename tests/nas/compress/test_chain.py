"""The chain: every step writes a model and a report line, and a second run resumes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nas.compress import (
    ChainConfig,
    CheckpointError,
    ExportConfig,
    FinetuneConfig,
    PruneConfig,
    evaluate_accuracy,
    largest_arch,
    macs_params,
    read_report,
    run_chain,
)
from nas.data import ImageDataset
from nas.supernet import recalibrate_bn
from search_spaces.tiny import TinySpace

pytest.importorskip("torch_pruning")
pytestmark = pytest.mark.slow

STEPS = ("distill", "prune", "ptq", "export")


@dataclass
class _Measured:
    latency_ms: float


class _MacsDevice:
    """A stand-in device whose latency is proportional to MACs (int8 twice as fast)."""

    name = "macs-device"
    runtime = "torch"
    threads = 1
    dtypes = ("fp32", "int8")

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> _Measured:
        assert input_shape == (1, 3, 32, 32)
        if dtype == "int8":
            assert calibration is not None and calibration.shape[1:] == (3, 32, 32)
        macs = macs_params(module, input_shape[1:])[0]
        return _Measured(macs / 1e6 / (2 if dtype == "int8" else 1))


class _FlatDevice:
    """A device on which channel count does not matter (overhead-bound): pruning buys nothing."""

    name = "flat-device"
    runtime = "torch"
    threads = 1
    dtypes = ("fp32", "int8")

    def measure_module(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        dtype: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> float:
        return 1.0


class _OrtArtifacts:
    """ONNX Runtime with one thread, timing the exported artifacts only (no dtype of a module)."""

    name = "ort-cpu-1t"
    runtime = "onnxruntime"
    threads = 1
    dtypes = ()

    def measure_module(self, *args: Any) -> float:
        raise AssertionError("a device without dtypes times no module")


def _config(macs_reduction: float = 0.3) -> ChainConfig:
    quick = FinetuneConfig(epochs=1, lr=0.05, batch_size=64, max_steps=2)
    return ChainConfig(
        distill=FinetuneConfig(epochs=1, lr=0.1, batch_size=64),
        prune=PruneConfig(
            macs_reduction=macs_reduction,
            rounds=1,
            step_fraction=0.25,
            finetune=quick,
            final_finetune=quick,
        ),
        ptq_images=32,
        export=ExportConfig(
            formats=("onnx",), ort_int8=False, parity_images=64, calibration_images=16
        ),
    )


def _run(
    tmp: Path,
    space: TinySpace,
    arch: dict[str, Any],
    data: ImageDataset,
    config: ChainConfig,
    steps: tuple[str, ...] = STEPS,
    **kw: Any,
) -> Any:
    return run_chain(
        tmp, arch, space=space, data=data, steps=steps, config=config,
        devices=[_MacsDevice(), _FlatDevice(), _OrtArtifacts()],
        latency_predictor=lambda m: macs_params(m, (3, 32, 32))[0] / 1e6,
        timer=lambda fn: (fn(), 0.5)[1], seed=0, **kw,
    )  # fmt: skip


def test_chain_reports_every_step_and_resumes(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    first = _run(tmp_path, space, arch, data, _config())
    assert first.resumed == []
    steps = [r.step for r in first.rows]
    assert steps[:4] == ["input", "distill", "prune", "ptq"] and set(steps[4:]) == {"export"}
    start, distill, pruned, int8 = first.rows[:4]
    # The starting point is measured like every step's model, so each gain or loss shows.
    assert start.model == "fresh fp32" and start.accuracy is not None
    assert start.macs == distill.macs and set(start.latency_ms) == {"macs-device", "flat-device"}
    assert pruned.macs < 0.71 * distill.macs and pruned.params < distill.params
    assert pruned.speedup["macs-device"] > 1.2
    assert "NOT FASTER on flat-device" in pruned.notes  # a pruned model that is not faster shows
    assert (
        int8.dtype == "int8" and int8.latency_ms["macs-device"] < pruned.latency_ms["macs-device"]
    )
    assert distill.predicted_latency_ms == pytest.approx(distill.macs / 1e6)
    artifacts = {r.file: r for r in first.rows if r.step == "export"}
    assert set(artifacts) == {
        "distill-fp32.onnx",
        "pruned-fp32.onnx",
        "ptq-int8.onnx",
    }
    for row in artifacts.values():
        assert (first.directory / "05-export" / row.file).is_file()
        assert row.top1_agreement is not None and row.top1_agreement >= 0.9
        assert row.latency_ms == {"ort-cpu-1t": 0.5}  # the device whose runtime runs it
    assert artifacts["pruned-fp32.onnx"].top1_agreement == 1.0
    md = (first.directory / "report.md").read_text()
    assert "| input | fresh fp32 | pytorch |" in md and "| distill | fp32 | pytorch |" in md
    assert "ptq-int8.onnx" not in md  # files by row
    assert [r.to_dict() for r in read_report(first.directory)] == [r.to_dict() for r in first.rows]

    # A second run finds every step finished and loads it: same rows, same models.
    again = _run(tmp_path, space, arch, data, _config())
    assert again.resumed == list(STEPS)
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in first.rows]
    x = data.test.tensors[0][:4]
    with torch.no_grad():
        assert torch.equal(again.models["prune"](x), first.models["prune"](x))
        assert torch.equal(again.models["ptq"](x), first.models["ptq"](x))

    # Changing the pruning target reruns pruning and what follows, not distillation.
    changed = _run(tmp_path, space, arch, data, _config(macs_reduction=0.4), STEPS[:2])
    assert changed.resumed == ["distill"]
    assert changed.rows[2].step == "prune" and changed.rows[2].macs < pruned.macs

    # A finished step whose checkpoint was damaged fails clearly instead of being trusted.
    ckpt = first.directory / "01-distill" / "model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="corrupt"):
        _run(tmp_path, space, arch, data, _config(), STEPS[:1])
    fixed = _run(tmp_path, space, arch, data, _config(), STEPS[:1], restart_from="distill")
    assert fixed.resumed == []


def test_chain_rejects_bad_steps_and_configs(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    with pytest.raises(ValueError, match="valid steps, in order"):
        run_chain(tmp_path, arch, space=space, data=data, steps=("distill", "quantize"))
    with pytest.raises(ValueError, match="must be distinct and in the order"):
        run_chain(tmp_path, arch, space=space, data=data, steps=("prune", "distill"))
    with pytest.raises(ValueError, match="unknown key"):
        ChainConfig.from_dict({"prune": {"macs_reduction": 0.3, "ratio": 1}})
    cfg = ChainConfig.from_dict({"prune": {"macs_reduction": 0.5}, "export": {"formats": ["pte"]}})
    assert cfg.prune.macs_reduction == 0.5 and cfg.export.formats == ("pte",)
    assert ChainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # A partial nested mapping changes only what it names: QAT keeps its own learning rate.
    partial = ChainConfig.from_dict({"qat": {"train": {"epochs": 1.0}}, "distill": {"epochs": 1}})
    assert partial.qat.train == replace(ChainConfig().qat.train, epochs=1.0)
    assert partial.distill == replace(ChainConfig().distill, epochs=1)
    with pytest.raises(ValueError, match="bn_calibration_images"):
        ChainConfig(bn_calibration_images=-1)
    assert replace(cfg, ptq_images=3).ptq_images == 3


def test_supernet_hook_gives_student_and_largest_teacher(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    """A student callable (a supernet's `export`) is called with the arch, and by default also
    with the space's largest arch to make the KD teacher."""
    asked: list[str] = []

    def export(a: Any) -> nn.Module:
        asked.append(space.key(a))
        return space.build(a)

    config = replace(
        _config(),
        distill=FinetuneConfig(epochs=1, batch_size=64, max_steps=1),
        bn_calibration_images=256,
    )
    result = run_chain(tmp_path, arch, space=space, data=data, steps=("distill",), config=config,
                       student=export, seed=0)  # fmt: skip
    assert space.key(arch) in asked and space.key(largest_arch(space)) in asked
    assert "KD alpha=0.7 T=4.0" in result.rows[1].notes
    # A subnet from a supernet starts with its batch norm recalibrated (as the search scored it):
    # the input row scores the subnet recalibrated on the seeded subset of the train split.
    start = result.rows[0]
    assert start.step == "input" and start.model == "inherited fp32"
    assert "recalibrated on 256 train images" in start.notes
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = space.build(arch)
    pick = torch.randperm(len(data.train.tensors[0]), generator=torch.Generator().manual_seed(0))
    recalibrate_bn(expected, list(data.train.tensors[0][pick[:256]].split(128)))
    assert start.accuracy == pytest.approx(evaluate_accuracy(expected, data.test))

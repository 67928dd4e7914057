"""The compression chain's training loops go through the one device-and-precision helper: KD
under autocast where the model goes back to where it was, QAT always in fp32, a batch that
does not fit named with its size, and the precision (not the device) in a step's fingerprint."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nas.compress import FinetuneConfig, QATConfig, distill_model, train_qat
from nas.compress.config import ChainConfig
from nas.compress.steps import _step_config
from nas.data import ImageDataset
from nas.supernet import OutOfMemory, Precision, execution
from search_spaces.tiny import TinySpace

STEPS = FinetuneConfig(epochs=1.0, batch_size=32, max_steps=3, lr=0.05)


def test_kd_under_bf16_autocast_trains_fp32_weights_and_stays_where_it_was(
    space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    def trained(precision: Precision | None) -> torch.nn.Module:
        torch.manual_seed(0)
        student, teacher = space.build(arch), space.build(arch)
        history = distill_model(student, teacher, data.train, STEPS, seed=1, precision=precision)
        assert history.steps == 3 and history.used_teacher
        return student

    plain = trained(None)
    fp32 = trained(execution("cpu", "fp32"))
    bf16 = trained(execution("cpu", "bf16"))
    for a, b, c in zip(plain.parameters(), fp32.parameters(), bf16.parameters(), strict=True):
        assert torch.equal(a, b), "fp32 through the helper is the loop it was"
        assert c.dtype == torch.float32 and c.device.type == "cpu"
    diffs = [
        (a - c).abs().max().item()
        for a, c in zip(plain.parameters(), bf16.parameters(), strict=True)
    ]
    assert 0 < max(diffs) < 0.5, "autocast changed the arithmetic, a little"


def test_a_kd_batch_that_does_not_fit_says_its_size(
    space: TinySpace, arch: dict[str, Any], data: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.compress.distill as distill

    def no_memory(*args: Any, **kwargs: Any) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(distill, "_train_step", no_memory)
    with pytest.raises(OutOfMemory, match=r"batch of 32 images .* Lower this training run's"):
        distill_model(space.build(arch), None, data.train, STEPS)


@pytest.mark.slow  # PT2E export and calibration: about 20 s on a shared core
def test_qat_trains_in_fp32_on_the_device_it_is_given(
    space: TinySpace,
    arch: dict[str, Any],
    data: ImageDataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nas.compress.qat as qat

    seen: list[Precision | None] = []
    real = qat.train_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(qat, "train_model", spy)
    config = QATConfig(train=FinetuneConfig(epochs=1.0, batch_size=32, max_steps=1, lr=5e-4))
    model = space.build(arch).eval()
    prepared, history = train_qat(
        model, data.train, config, space.input_shape(arch), device=torch.device("cpu")
    )
    assert history.steps == 1
    (precision,) = seen
    assert precision is not None and precision.name == "fp32" and precision.dtype is None
    assert precision.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in prepared.parameters())


def test_the_precision_of_a_training_step_is_in_its_fingerprint_and_the_device_is_not() -> None:
    class Chain:
        precision: Precision | None = None
        predictor = None

    chain, config = Chain(), ChainConfig()
    before = {s: _step_config(s, config, "t", chain) for s in ("distill", "prune", "qat")}  # type: ignore[arg-type]
    chain.precision = execution("cpu", "fp32")
    assert {s: _step_config(s, config, "t", chain) for s in before} == before  # type: ignore[arg-type]
    chain.precision = execution("cpu", "bf16")
    after = {s: _step_config(s, config, "t", chain) for s in before}  # type: ignore[arg-type]
    assert after["distill"]["precision"] == after["prune"]["precision"] == "bf16"
    assert after["qat"] == before["qat"], "QAT trains in fp32 whatever the precision"

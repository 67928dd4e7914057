"""The hardware-aware loop goes through the one device-and-precision helper: fp32 through it is
the loop it was, bf16 autocast changes the supernet's arithmetic a little (its weights and the
logits stay fp32 on the CPU), and the checkpoint carries the loss scaler's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.hwtrain import HWTrainResult, train_hw
from nas.hwtrain.train import CHECKPOINT
from nas.supernet import OutOfMemory, Precision, execution
from tests.nas.hwtrain.test_train import DATA, _config, _setup


def _run(precision: Precision | None, out: Path | None = None, epochs: int = 2) -> HWTrainResult:
    torch.manual_seed(0)  # the toy supernet's initial weights
    net, logits, relax, terms, loss = _setup()
    config = _config(loss=loss, epochs=epochs, max_steps_per_epoch=3)
    return train_hw(net, logits, relax, terms, DATA, config, out, precision=precision)


def test_bf16_autocast_changes_the_supernet_and_logits_a_little() -> None:
    plain, fp32, bf16 = _run(None), _run(execution("cpu", "fp32")), _run(execution("cpu", "bf16"))
    for a, b, c in zip(
        plain.supernet.parameters(), fp32.supernet.parameters(), bf16.supernet.parameters(),
        strict=True,
    ):  # fmt: skip
        assert torch.equal(a, b), "fp32 through the helper is the loop it was"
        assert c.dtype == torch.float32 and c.device.type == "cpu"
    assert torch.equal(plain.logits.alpha, fp32.logits.alpha)
    assert bf16.logits.alpha.dtype == torch.float32
    diffs = [
        (a - c).abs().max().item()
        for a, c in zip(plain.supernet.parameters(), bf16.supernet.parameters(), strict=True)
    ]
    assert 0 < max(diffs) < 0.5, "autocast changed the arithmetic, a little"
    assert not torch.equal(plain.logits.alpha, bf16.logits.alpha)
    assert (plain.logits.alpha - bf16.logits.alpha).abs().max() < 0.5
    assert all(torch.isfinite(torch.tensor(row["arch_loss"])) for row in bf16.history[1:])


def test_the_checkpoint_carries_the_loss_scalers_state(tmp_path: Path) -> None:
    def scaled() -> Precision:  # a CPU scaler stands in for fp16's on a GPU
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
        return Precision("bf16", torch.device("cpu"), scaler)

    trained = scaled()
    _run(trained, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    saved = state["precision"]
    assert saved["name"] == "bf16" and saved["w"] == trained.state_dict()
    assert saved["w"]["scale"] != 1024.0, "the scale grew with the steps"
    resumed = scaled()  # every epoch is done: the run only loads its checkpoint
    result = _run(resumed, tmp_path)
    assert result.resumed_from_epoch == 2
    assert resumed.state_dict() == trained.state_dict()


def test_a_checkpoint_without_precision_state_resumes(tmp_path: Path) -> None:
    first = _run(None, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["precision"] == {"name": "fp32", "w": {}, "a": {}}
    del state["precision"]  # as written before the helper
    torch.save(state, tmp_path / CHECKPOINT)
    again = _run(None, tmp_path)
    assert again.resumed_from_epoch == 2
    assert torch.equal(first.logits.alpha, again.logits.alpha)


def test_a_batch_that_does_not_fit_says_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    def no_memory(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(F, "cross_entropy", no_memory)
    with pytest.raises(OutOfMemory, match=r"batch of 16 images"):
        _run(None)

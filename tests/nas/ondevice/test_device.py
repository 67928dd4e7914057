"""The on-device loops train through the one device-and-precision helper, always in fp32 (an
edge device's arithmetic): a device that is not there is named before any work, a batch that
does not fit says its size, and the model comes back on the CPU."""

from __future__ import annotations

import pytest
import torch

from nas.ondevice import finetune, make_plan, train_source_model
from nas.ondevice.sparse import probe_layers
from nas.supernet import DeviceError, OutOfMemory
from search_spaces.tiny import TinySpace
from tests.nas.ondevice.test_adapt import SMALL_ARCH

X = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.arange(24) % 10


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinySpace().build(SMALL_ARCH).eval()


def test_a_device_that_is_not_there_is_named_before_any_work() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    plan = make_plan(model, "last", blocks_k=1)
    with pytest.raises(DeviceError, match="cuda:7"):
        finetune(model, plan, X, Y, steps=2, device="cuda:7")
    with pytest.raises(DeviceError, match="cuda:7"):
        train_source_model(model, X, Y, epochs=1, batch=8, device="cuda:7")
    with pytest.raises(DeviceError, match="cuda:7"):
        probe_layers(model, X, Y, lambda p: 1, steps=1, device="cuda:7")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_loops_train_in_fp32_and_hand_the_model_back_on_the_cpu() -> None:
    model = train_source_model(_model(), X, Y, epochs=1, batch=8, device="cpu")
    result = finetune(model, make_plan(model, "last", blocks_k=1), X, Y, steps=2, device="cpu")
    for m in (model, result.model):
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in m.parameters())
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_a_batch_that_does_not_fit_says_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", no_memory)
    model = _model()
    with pytest.raises(OutOfMemory, match=r"batch of 8 images"):
        finetune(model, make_plan(model, "last", blocks_k=1), X, Y, steps=2, batch=8)

"""The one device-and-precision helper every training loop uses (`execution`, `fits_memory`):
devices that are not there named, a batch that does not fit named with its size and the
remedy (in the supernet loop too), evaluation and BN recalibration on the device under
autocast, and the optional torch.compile path on the CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nas.supernet import (
    DeviceError,
    OutOfMemory,
    SubnetEvaluator,
    compile_model,
    execution,
    fits_memory,
    train_supernet,
)
from search_spaces import TinySpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nas/supernet/conftest.py


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_execution_is_a_precision_on_a_device_that_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prec = execution("cpu", "bf16")
    assert prec.device == torch.device("cpu") and prec.dtype == torch.bfloat16
    x = torch.randn(2, 3)
    assert prec.to(x) is x  # already there: no copy
    with pytest.raises(DeviceError, match=r"'cuda:3' is not there; this machine has: cpu"):
        execution("cuda:3", "bf16")
    with pytest.raises(DeviceError, match="fp16 autocast needs a GPU"):
        execution("cpu", "fp16")


def test_fits_memory_names_the_batch_and_the_remedy() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(OutOfMemory) as err, fits_memory(cpu, 96, remedy="Try 48"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    assert str(err.value) == (
        "a batch of 96 images does not fit the memory of cpu; no smaller batch was tried in "
        "this run. Try 48"
    )
    assert (err.value.batch_size, err.value.fitted, err.value.device) == (96, 0, "cpu")
    with pytest.raises(RuntimeError, match="shape mismatch"), fits_memory(cpu, 96):
        raise RuntimeError("shape mismatch")  # anything else passes through


def test_a_supernet_batch_that_does_not_fit_says_batch_size_and_accumulate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CPU runs out of memory on purpose: the step's forward pass raises what CUDA raises."""
    from nas.supernet import schedules

    def no_memory(*args: Any, **kwargs: Any) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    for cls in schedules._SCHEDULE_CLASSES.values():
        monkeypatch.setattr(cls, "micro_step", no_memory)
    config = {"epochs": 1, "batch_size": 6, "checkpoint_every": 0, "options": {"n_random": 0}}
    with pytest.raises(OutOfMemory, match=r"batch of 6 images .* batch_size \(e.g. 3\) and raise"):
        train_supernet(TinySpace(), _data(12), tmp_path / "oom", config, progress=False)


def test_evaluation_recalibrates_and_scores_on_the_device_under_autocast() -> None:
    space = TinySpace()
    net = space.supernet()
    train, val = _data(32, 1), _data(40, 2)
    kwargs: dict[str, Any] = {"calib_images": 16, "calib_batch_size": 8, "batch_size": 16}
    plain = SubnetEvaluator(net, train, val, **kwargs)
    fp32 = SubnetEvaluator(net, train, val, device="cpu", precision="fp32", **kwargs)
    bf16 = SubnetEvaluator(net, train, val, device="cpu", precision="bf16", **kwargs)
    assert plain.settings_id == fp32.settings_id, "fp32 keeps the cache key it had"
    assert bf16.settings_id != fp32.settings_id, "another precision scores otherwise"
    assert all(b.device == bf16.precision.device for b in bf16.calib_batches)
    archs = [net.largest_arch(), net.smallest_arch()]
    assert plain.evaluate(archs) == fp32.evaluate(archs)
    low = bf16.evaluate(archs)
    assert all(0.0 <= a <= 1.0 for a in low)
    with pytest.raises(DeviceError, match=r"'cuda:5' is not there"):
        SubnetEvaluator(net, train, val, device="cuda:5", **kwargs)


@pytest.mark.slow  # torch.compile (inductor, a C compiler) takes 15-45 s on a shared core
def test_a_compiled_model_trains_as_the_eager_one() -> None:
    """The optional compile path on the CPU: a few steps of a tiny conv net compiled with
    `compile_model` (inductor, which needs a C compiler; this machine has gcc) train the
    weights the eager steps train."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile's inductor backend needs a C compiler; none is on PATH")

    def steps(compiled: bool) -> nn.Module:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )
        model = compile_model(net, compiled)
        assert (model is not net) == compiled
        prec = execution("cpu", "fp32")
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for i in range(3):
            x, y = _data(8, 10 + i)
            opt.zero_grad()
            with prec.autocast():
                loss = nn.functional.cross_entropy(model(prec.to(x)), prec.to(y))
            prec.backward(loss)
            prec.step(opt)
        return net

    eager, compiled = steps(False), steps(True)
    for (name, a), b in zip(
        eager.state_dict().items(), compiled.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name

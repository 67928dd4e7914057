"""Training at scale on the CPU: streamed folders decoded by workers train the same weights as
without workers, a run cut in the middle of an epoch resumes to the same weights, devices that
are not there are named, autocast runs only where supported, and a resume may change how the run
executes (device, precision, workers) but not what it learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nas.data import load_streamed_folder
from nas.supernet import (
    DeviceError,
    OutOfMemory,
    Precision,
    load_supernet,
    out_of_memory,
    resolve_device,
    train_supernet,
)
from search_spaces import TinySpace
from tests.nas.data.test_streamed import write_folder

CONFIG: dict[str, Any] = {
    "schedule": "sandwich",
    "epochs": 2,
    "batch_size": 6,
    "seed": 2,
    "options": {"n_random": 1},
    "checkpoint_every": 0,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nas/supernet/conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("scale") / "imgs", per_class=10, size=36)


def _same(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_streamed_training_does_not_depend_on_workers(folder: Path, tmp_path: Path) -> None:
    data = load_streamed_folder(folder, resolution=32, val_fraction=0.0, test_fraction=0.0)
    a = train_supernet(TinySpace(), data, tmp_path / "w0", CONFIG, progress=False)
    b = train_supernet(
        TinySpace(), data, tmp_path / "w2", CONFIG, num_workers=2, progress=False, accumulate=1
    )
    assert a.completed and b.completed and a.step == b.step == 2 * (30 // 6)
    _same(a.supernet, b.supernet)
    assert b.data_wait_s > 0 and b.device == "cpu" and b.skipped == 0


def test_a_streamed_run_cut_mid_epoch_resumes_to_the_same_weights(
    folder: Path, tmp_path: Path
) -> None:
    data = load_streamed_folder(folder, resolution=32, val_fraction=0.0, test_fraction=0.0)
    whole = train_supernet(TinySpace(), data, tmp_path / "whole", CONFIG, progress=False)
    cut = train_supernet(
        TinySpace(), data, tmp_path / "cut", CONFIG, max_steps=7, num_workers=1, progress=False
    )
    assert cut.step == 7 and not cut.completed  # in the second epoch, at its 2nd batch
    # the rest on another executor: workers and precision may change on resume
    rest = train_supernet(
        TinySpace(), data, tmp_path / "cut", CONFIG, num_workers=2, progress=False
    )
    assert rest.completed and rest.step == whole.step
    _same(whole.supernet, rest.supernet)
    _same(whole.supernet, load_supernet(TinySpace(), tmp_path / "cut", map_location="cpu"))
    with pytest.raises(DeviceError, match="'cuda:7' is not there"):
        load_supernet(TinySpace(), tmp_path / "cut", map_location="cuda:7")


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g))
    config = {**CONFIG, "epochs": 1, "precision": "bf16", "channels_last": True}
    result = train_supernet(TinySpace(), data, tmp_path / "bf16", config, progress=False)
    assert result.completed and all(p.dtype == torch.float32 for p in result.supernet.parameters())
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    fp32 = train_supernet(
        TinySpace(), data, tmp_path / "fp32", {**config, "precision": "fp32"}, progress=False
    )
    # autocast changed the arithmetic: the weights differ from fp32's, a little
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(result.supernet.parameters(), fp32.supernet.parameters(), strict=True)
    ]
    assert 0 < max(diffs) < 0.5


def test_precision_only_where_supported() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(DeviceError, match="fp16 autocast needs a GPU"):
        Precision("fp16", cpu)
    with pytest.raises(DeviceError, match="precision must be one of"):
        Precision("int8", cpu)
    bf16 = Precision("bf16", cpu)
    assert bf16.scaler is None and bf16.state_dict() == {}
    lin = nn.Linear(4, 4)
    with bf16.autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
        with bf16.full():  # QAT's fake quantisers stay in fp32
            assert lin(torch.randn(2, 4)).dtype == torch.float32
    with Precision("fp32", cpu).autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        train_supernet(
            TinySpace(), (torch.randn(8, 3, 32, 32), torch.zeros(8).long()), "x", precision="fp8"
        )


def test_devices_that_are_not_there_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") in (torch.device("cpu"), torch.device("mps"))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"'cuda:3' is not there; this machine has: cpu"):
        resolve_device("cuda:3")
    with pytest.raises(DeviceError, match="'cuda:1' is not there"):
        resolve_device("cuda", local_rank=1)
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="this machine has: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_a_batch_that_does_not_fit_says_what_to_try() -> None:
    assert not out_of_memory(RuntimeError("shape mismatch"), torch.device("cpu"), 64, 0)
    with pytest.raises(OutOfMemory, match=r"batch of 256 .* largest that did was 128"):
        out_of_memory(
            torch.OutOfMemoryError("CUDA out of memory"), torch.device("cuda:0"), 256, 128
        )
    with pytest.raises(OutOfMemory, match=r"batch_size \(e.g. 32\) and raise accumulate"):
        out_of_memory(
            RuntimeError("DefaultCPUAllocator: can't allocate: out of memory"),
            torch.device("cpu"),
            64,
            0,
        )


def test_evaluation_decodes_a_streamed_split_with_workers(folder: Path) -> None:
    from nas.data import load_image_folder
    from nas.supernet import SubnetEvaluator

    mem = load_image_folder(folder, resolution=32)
    streamed = load_streamed_folder(folder, resolution=32, mean=mem.mean, std=mem.std)
    space = TinySpace()
    net = space.supernet()
    a = SubnetEvaluator(net, mem.train, mem.test, calib_images=8)
    b = SubnetEvaluator(net, mem.train, streamed.test, calib_images=8)
    assert torch.allclose(a.eval_x, b.eval_x, atol=1e-5) and torch.equal(a.eval_y, b.eval_y)
    archs = [net.largest_arch(), net.smallest_arch()]
    assert a.evaluate(archs) == b.evaluate(archs)
    # calibration on a streamed split decodes only the images it picks: the same ones
    c = SubnetEvaluator(net, streamed.test, mem.test, calib_images=5, seed=3)
    d = SubnetEvaluator(net, mem.test, mem.test, calib_images=5, seed=3)
    assert torch.allclose(torch.cat(c.calib_batches), torch.cat(d.calib_batches), atol=1e-5)


def _ddp_worker(rank: int, world: int, port: int, folder: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # the same convolution kernels as the reference
    data = load_streamed_folder(folder, resolution=32, val_fraction=0.0, test_fraction=0.0)
    try:
        train_supernet(TinySpace(), data, out, {**CONFIG, "epochs": 1}, num_workers=1,
                       progress=False)  # fmt: skip
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_on_a_streamed_folder_matches_accumulation(folder: Path, tmp_path: Path) -> None:
    """Two gloo processes, each decoding its share of every global batch in a worker, train
    what one process accumulating both shares trains."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_ddp_worker, args=(2, port, str(folder), str(tmp_path / "ddp")), nprocs=2)
    data = load_streamed_folder(folder, resolution=32, val_fraction=0.0, test_fraction=0.0)
    with torch.backends.mkldnn.flags(enabled=False):
        one = train_supernet(TinySpace(), data, tmp_path / "one", {**CONFIG, "epochs": 1},
                             accumulate=2, progress=False)  # fmt: skip
    assert one.step == 30 // 12
    ddp = load_supernet(TinySpace(), tmp_path / "ddp")
    for (name, a), b in zip(ddp.named_parameters(), one.supernet.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name


def test_a_gradient_scaler_steps_clips_and_round_trips() -> None:
    """The fp16 path's scaler (here torch's CPU GradScaler, as no GPU is at hand): the step
    unscales before clipping, and its state survives a checkpoint's JSON."""
    import json

    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    prec = Precision("bf16", torch.device("cpu"), scaler=torch.amp.GradScaler("cpu", 1024.0))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = lin.weight.detach().clone()
    prec.backward(lin(torch.randn(8, 4)).pow(2).mean())
    assert lin.weight.grad is not None and lin.weight.grad.abs().max() > 1  # scaled
    prec.step(opt, lin.parameters(), clip_norm=1e-3)
    moved = (lin.weight.detach() - before).norm().item()
    assert 0.9e-4 < moved <= 1e-4 + 1e-9  # lr x the clipped norm of the unscaled gradient
    state = json.loads(json.dumps(prec.state_dict()))
    assert state["scale"] == 1024.0 and isinstance(state["growth_interval"], int)
    fresh = Precision("bf16", torch.device("cpu"), scaler=torch.amp.GradScaler("cpu"))
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == 1024.0


def test_step_times_are_per_step_of_the_call(tmp_path: Path) -> None:
    """`step_s` / `step_cpu_s` hold one figure per step the call ran (a resumed call only its
    own), and the wall seconds add up to `train_s`."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    first = train_supernet(TinySpace(), data, tmp_path / "r", CONFIG, max_steps=1, progress=False)
    assert len(first.step_s) == len(first.step_cpu_s) == 1
    assert sum(first.step_s) == pytest.approx(first.train_s)
    assert all(c > 0 for c in first.step_cpu_s)
    rest = train_supernet(TinySpace(), data, tmp_path / "r", CONFIG, progress=False)
    assert rest.step == 4 and len(rest.step_s) == len(rest.step_cpu_s) == 3

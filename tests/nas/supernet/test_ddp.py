"""DistributedDataParallel on CPU (gloo, 2 processes) equals one process accumulating gradients
over the same per-rank micro-batches: the same subnets run on every rank, and batch norm
normalises each micro-batch on its own in both."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nas.supernet import load_supernet, train_supernet
from search_spaces import TinySpace

CONFIG: dict[str, Any] = {
    "schedule": "sandwich",
    "epochs": 1,
    "batch_size": 8,
    "seed": 5,
    "options": {"n_random": 1},
}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # what torchrun puts in the environment
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # the same convolution kernels as the reference
    try:
        train_supernet(TinySpace(), _data(), out, CONFIG, progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_matches_gradient_accumulation(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # oneDNN's and ATen's convolutions differ in the last bits, which three steps of a sandwich
    # on 4-image batch norms grow to 1e-4 (seen on an AVX-512 host where the spawned workers
    # and this process picked different kernels): both sides run ATen's
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            single = train_supernet(
                TinySpace(), _data(), tmp_path / "one", CONFIG, accumulate=2, progress=False
            )
    finally:
        torch.set_num_threads(threads)
    assert single.step == 3
    ddp = load_supernet(TinySpace(), tmp_path / "ddp")
    with torch.random.fork_rng():
        torch.manual_seed(CONFIG["seed"])  # train_supernet's initialisation
        init = TinySpace().supernet()
    moved, worst = 0, 0.0
    for (name, a), b, c in zip(
        ddp.named_parameters(), single.supernet.parameters(), init.parameters(), strict=True
    ):
        worst = max(worst, (a - b).abs().max().item())
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name
        moved += int((a - c).abs().max() > 1e-3)
    assert moved > 20, worst  # training moved the weights, so the comparison means something

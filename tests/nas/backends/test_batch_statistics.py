"""Batch norm in training mode in the runtime's training program, against PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nas.backends import (
    RuntimeTrainer,
    TrainingProgramError,
    export_training_program,
    with_batch_statistics,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    )
    with torch.no_grad():  # running statistics that are not the defaults
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    return net.train()


def test_written_out_batch_norm_equals_pytorchs_training_mode() -> None:
    net = _net()
    out = with_batch_statistics(net)
    assert [n for n, _ in out.named_parameters()] == [n for n, _ in net.named_parameters()]
    x = torch.randn(4, 3, 8, 8)
    for _ in range(3):
        assert torch.allclose(out(x), net(x), atol=1e-5)
    assert torch.allclose(out[1].running_mean, net[1].running_mean, atol=1e-6)
    assert torch.allclose(out[1].running_var, net[1].running_var, atol=1e-5)
    with pytest.raises(ValueError, match="only BatchNorm2d"):
        with_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))


def test_runtime_trains_with_batch_statistics_as_pytorch_does() -> None:
    pytest.importorskip("executorch")
    net = _net()
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(5, 4, 3, 8, 8, generator=gen)
    ys = torch.randint(0, 3, (5, 4), generator=gen)
    with pytest.raises(TrainingProgramError, match="batch_norm='train'"):
        export_training_program(net, (xs[0], ys[0]))
    program = export_training_program(net, (xs[0], ys[0]), batch_norm="train")
    assert program.buffer_mutations == 2
    trainer = RuntimeTrainer(program, lr=0.1)
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for x, y in zip(xs, ys, strict=True):
        got = trainer.step(x, y)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ref(x), y)
        loss.backward()
        opt.step()
        assert abs(got - loss.item()) <= 1e-4 * abs(loss.item())
    trained = copy.deepcopy(net)
    trainer.load_into(trained)
    for a, b in zip(trained.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)

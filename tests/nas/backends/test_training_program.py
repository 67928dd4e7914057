"""ExecuTorch training programs: the runtime's SGD steps match PyTorch's, the weights read back,
frozen-only XNNPACK delegation keeps trainable weights out of delegates, and what the runtime
cannot do is a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nas.backends import RuntimeTrainer, TrainingProgramError, export_training_program

pytest.importorskip("executorch")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def _steps(partition: str) -> None:
    net = _net()
    for name, p in net.named_parameters():
        p.requires_grad_(name.endswith("bias") or name.startswith("8."))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)
    program = export_training_program(net, (x, y), partition=partition)
    assert program.plan_bytes > 0
    assert set(program.trainable) == {"1.bias", "4.bias", "8.weight", "8.bias"}
    if partition == "xnnpack_frozen":
        assert program.delegated_ops > 0
    trainer = RuntimeTrainer(program, lr=0.1)
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1)
    for _ in range(5):
        loss = trainer.step(x, y)
        opt.zero_grad()
        expected = nn.functional.cross_entropy(ref(x), y)
        expected.backward()
        opt.step()
        assert abs(loss - expected.item()) <= 1e-4 * abs(expected.item())
    trainer.load_into(net)
    for (name, got), want in zip(net.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(got, want, atol=1e-6), name
    trained, start = dict(net.named_parameters()), dict(_net().named_parameters())
    assert not torch.equal(trained["8.weight"], start["8.weight"])  # it did train


@pytest.mark.slow
@pytest.mark.parametrize("partition", ["portable", "xnnpack_frozen"])
def test_runtime_steps_match_pytorch(partition: str) -> None:
    _steps(partition)


def test_what_the_runtime_cannot_do_is_a_clear_error() -> None:
    net = _net()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(TrainingProgramError, match="nothing to train"):
        export_training_program(net, (x, y))
    net.train()
    net[0].weight.requires_grad_(True)
    with pytest.raises(TrainingProgramError, match="training mode"):
        export_training_program(net, (x, y))
    with pytest.raises(ValueError, match="partition"):
        export_training_program(net.eval(), (x, y), partition="gpu")

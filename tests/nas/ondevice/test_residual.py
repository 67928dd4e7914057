"""TinyTL's lite residual branches: added to any space's network, planned by the memory model,
exported as a training program that agrees with PyTorch (issue 20 item 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.ondevice import (
    LiteResidual,
    add_lite_residuals,
    check_memory,
    finetune,
    make_plan,
    training_memory,
)
from search_spaces import SPACES, get_space


@pytest.mark.parametrize("space_name", SPACES.list())
def test_branches_on_every_space_train_with_the_biases(space_name: str) -> None:
    space = get_space(space_name)
    arch = space.sample(rng=0)
    shape = space.input_shape(arch)
    with torch.device("meta"):
        net = space.build(arch)
    aug = add_lite_residuals(net, shape)
    branches = [n for n, m in aug.named_modules() if isinstance(m, LiteResidual)]
    assert branches
    plan = make_plan(aug, "lite_residual")
    for name in plan.trainable:
        assert name.endswith("bias") or any(name.startswith(f"{b}.") for b in branches)
    assert any(n.endswith("project.weight") for n in plan.trainable)
    mem = {
        mode: training_memory(lambda: aug, shape, p, batch=2)
        for mode, p in (("lite", plan), ("bias", make_plan(aug, "bias")))
    }
    # the branches' weights, gradients and small activations come on top of biases only
    assert mem["lite"].total_bytes > mem["bias"].total_bytes
    assert mem["lite"].trainable_bytes > mem["bias"].trainable_bytes


def test_branches_start_at_zero_and_need_a_network_that_has_them() -> None:
    space = get_space("tiny")
    arch = space.sample(rng=1)
    net = space.build(arch).eval()
    aug = add_lite_residuals(net, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), aug(x))  # the deployed network's function, until it trains
    main = {n.replace(".main.", ".") for n, _ in aug.named_parameters() if ".lite." not in n}
    assert main == {n for n, _ in net.named_parameters()}  # the deployed weights, kept
    plan = make_plan(aug, "lite_residual")
    built = training_memory(lambda: aug, (3, 32, 32), plan)  # a built network: a meta copy
    meta = training_memory(
        lambda: add_lite_residuals(space.build(arch), (3, 32, 32)), (3, 32, 32), plan
    )
    assert built.total_bytes == meta.total_bytes and next(aug.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="add_lite_residuals"):
        make_plan(net, "lite_residual")
    with pytest.raises(ValueError, match="no block"):
        add_lite_residuals(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), (3, 4, 4))


@pytest.mark.slow
def test_lite_residual_program_agrees_and_is_planned() -> None:
    """Exported as a training program: the runtime's losses are PyTorch's, and the memory model
    is within the 5 % the bias mode meets against the program's plan."""
    pytest.importorskip("executorch")
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}  # the smallest arch
    aug = add_lite_residuals(space.build(arch).eval(), (3, 32, 32)).eval()
    plan = make_plan(aug, "lite_residual")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    result = finetune(aug, plan, x, y, steps=4, batch=2, engine="executorch", check=True)
    for got, want in zip(result.losses, result.reference_losses, strict=True):
        assert abs(got - want) <= 1e-4 * abs(want)
    assert result.losses[-1] != result.losses[0]  # it trained
    memory = training_memory(
        lambda: add_lite_residuals(space.build(arch), (3, 32, 32)),
        (3, 32, 32),
        plan,
        batch=2,
        num_classes=10,
    )
    check, _ = check_memory(aug, plan, memory, (3, 32, 32), num_classes=10)
    assert abs(check.error_pct) <= 5.0, check.as_row()


def test_an_op_without_a_backward_kernel_is_a_clear_error() -> None:
    """avg_pool2d exports, but the runtime has no kernel for its backward: the export says so
    (the runtime itself would fail only when a step runs)."""
    pytest.importorskip("executorch")
    from nas.backends import TrainingProgramError, export_training_program

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 2)
    ).eval()
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    with pytest.raises(TrainingProgramError, match=r"no kernel for aten::avg_pool2d_backward"):
        export_training_program(net, (x, y))

"""The training-memory model against the ExecuTorch program's memory plan and eager autograd."""

from __future__ import annotations

import pytest
import torch

from nas.ondevice import check_memory, eager_saved_bytes, make_plan, training_memory
from search_spaces import get_space

pytest.importorskip("executorch")


def test_eager_bytes_keep_conv_inputs_of_frozen_layers() -> None:
    space = get_space("tiny")
    arch = space.sample(rng=0)
    net = space.build(arch).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    make_plan(net, "full").apply(net)
    full = eager_saved_bytes(net, x, y)
    make_plan(net, "bias").apply(net)
    bias = eager_saved_bytes(net, x, y)
    make_plan(net, "last").apply(net)
    last = eager_saved_bytes(net, x, y)
    assert bias > 0.9 * full  # eager autograd keeps what the compiled plan drops
    assert last < bias / 100


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "tolerance_pct"), [("bias", 5.0), ("full", 10.0)])
def test_model_against_the_program_plan(mode: str, tolerance_pct: float) -> None:
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}  # the smallest arch
    net = space.build(arch).eval()
    plan = make_plan(net, mode)
    memory = training_memory(lambda: space.build(arch), (3, 32, 32), plan, batch=2, num_classes=10)
    check, program = check_memory(net, plan, memory, (3, 32, 32), num_classes=10)
    assert check.program_plan_bytes == program.plan_bytes > 0
    assert abs(check.error_pct) <= tolerance_pct, check.as_row()
    assert check.model_peak_bytes <= check.program_plan_bytes


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bias", "sparse"])
def test_model_equals_the_program_plan(mode: str) -> None:
    """The model replays the program's own packing: the smallest `tiny` arch within 1 %."""
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}
    net = space.build(arch).eval()
    plan = make_plan(
        net, mode, layers=["blocks.1.expand.0", "head.classifier"][: 2 * (mode == "sparse")]
    )
    memory = training_memory(lambda: space.build(arch), (3, 32, 32), plan, batch=2, num_classes=10)
    check, _ = check_memory(net, plan, memory, (3, 32, 32), num_classes=10)
    assert abs(check.error_pct) <= 1.0, check.as_row()

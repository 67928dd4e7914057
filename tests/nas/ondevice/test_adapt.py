"""The domain-shift task, fine-tuning under a plan, AdaBN, and the sparse plan under a budget."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from nas.backends import export_training_program
from nas.data import ImageDataset, load_embedded_digits
from nas.ondevice import (
    BUDGET_MARGIN,
    BudgetTooSmallError,
    LayerProbe,
    TrainingMemory,
    UpdatePlan,
    adabn,
    apply_shift,
    finetune,
    make_plan,
    make_shift_task,
    plan_under_budget,
    probe_layers,
    step_down_in_program,
    training_memory,
)
from search_spaces.tiny import TinySpace

SMALL_ARCH: dict[str, Any] = {
    "s0.depth": 1, "s0.width": 16, "s0.b0.k": 3, "s0.b0.e": 2, "s0.b1.k": 3, "s0.b1.e": 2,
    "s1.depth": 1, "s1.width": 24, "s1.b0.k": 3, "s1.b0.e": 2, "s1.b1.k": 3, "s1.b1.e": 2,
    "s2.depth": 1, "s2.width": 32, "s2.b0.k": 3, "s2.b0.e": 2, "s2.b1.k": 3, "s2.b1.e": 2,
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return load_embedded_digits(copies_train=1, copies_val=2, copies_test=1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinySpace().build(SMALL_ARCH).eval()


def test_task_is_disjoint_and_shifted(data: ImageDataset) -> None:
    task = make_shift_task(data, "invert", shots=10, seed=3, max_test=200)
    assert task.counts["shots_images"] == 100 == len(task.shots_y)
    assert np.bincount(task.shots_y.numpy(), minlength=10).tolist() == [10] * 10
    assert task.counts["test_images"] == 200 == len(task.test_y)
    train, val, test = (set(data.source_ids[s].tolist()) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    # the shift changes every image, and inverting twice gives the image back
    raw = data.test.tensors[0][:200]
    assert not torch.allclose(task.test_x, raw)
    twice = apply_shift(task.test_x, data, "invert")
    assert torch.allclose(twice, raw.clamp(*_range(data)), atol=1e-4)
    assert make_shift_task(data, "invert", shots=10, seed=3).shots_y.tolist() == (
        task.shots_y.tolist()
    )  # seeded
    with pytest.raises(ValueError, match="valid"):
        make_shift_task(data, "sepia")
    with pytest.raises(ValueError, match="fewer than"):
        make_shift_task(data, shots=10_000)


def _range(data: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return -mean / std, (1 - mean) / std


def test_finetune_trains_only_the_plan(data: ImageDataset, model: torch.nn.Module) -> None:
    task = make_shift_task(data, "invert", shots=10, max_test=100)
    plan = make_plan(model, "last", blocks_k=2)
    result = finetune(model, plan, task.shots_x, task.shots_y, steps=20, lr=0.1)

    def loss(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(task.shots_x), task.shots_y).item()

    assert loss(result.model) < loss(model)
    before, after = dict(model.named_parameters()), dict(result.model.named_parameters())
    for name, p in after.items():
        assert torch.equal(p, before[name]) != plan.trains(name), name
    for (name, b), b0 in zip(result.model.named_buffers(), model.buffers(), strict=True):
        assert torch.equal(b, b0), name  # batch norm stays frozen
    adapted = adabn(model, task.shots_x)
    stats, stats0 = dict(adapted.named_buffers()), dict(model.named_buffers())
    assert not torch.equal(stats["stem.1.running_mean"], stats0["stem.1.running_mean"])
    for p, p0 in zip(adapted.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, p0)


def test_sparse_plan_fits_its_budget(data: ImageDataset, model: torch.nn.Module) -> None:
    task = make_shift_task(data, "invert", shots=4, max_test=10)
    space = TinySpace()

    def factory() -> torch.nn.Module:
        return space.build(SMALL_ARCH)

    full = training_memory(factory, (3, 32, 32), make_plan(model, "full"), num_classes=10)
    budget = full.total_bytes // 4
    plan, memory, probes = plan_under_budget(
        model, factory, (3, 32, 32), budget, task.shots_x, task.shots_y,
        num_classes=10, probe_steps=3,
    )  # fmt: skip
    assert plan.mode == "sparse" and plan.layers
    assert memory.total_bytes * (1 + BUDGET_MARGIN) <= budget  # the default margin
    assert plan.budget_check == "model"
    assert {p.layer for p in probes} >= set(plan.layers)
    smallest = min(p.cost_bytes for p in probes)
    with pytest.raises(BudgetTooSmallError, match="smallest plan needs") as err:
        plan_under_budget(
            model, factory, (3, 32, 32), smallest - 1, task.shots_x, task.shots_y,
            num_classes=10, probe_steps=1,
        )  # fmt: skip
    assert err.value.smallest_bytes >= smallest


def test_layers_rank_by_gain_per_byte_over_the_floor(
    data: ImageDataset, model: torch.nn.Module
) -> None:
    """The forward pass's memory is paid by every plan: a layer's gain is weighed against what
    its update adds to it (MCUNetV3), so near the floor a cheap layer with a small gain outranks
    a dear one with a large gain, which per total byte it would not."""
    space = TinySpace()

    def cost(plan: UpdatePlan) -> int:
        return training_memory(lambda: space.build(SMALL_ARCH), (3, 32, 32), plan).total_bytes

    floor = cost(make_plan(model, "sparse", layers=[]))
    task = make_shift_task(data, "invert", shots=2, max_test=10)
    probes = probe_layers(model, task.shots_x, task.shots_y, cost, steps=1)
    assert {p.floor_bytes for p in probes} == {floor}
    assert all(p.cost_bytes > floor for p in probes)
    cheap = LayerProbe("a", gain=0.01, cost_bytes=floor + 1024, floor_bytes=floor)
    dear = LayerProbe("b", gain=0.5, cost_bytes=floor + 100 * 1024, floor_bytes=floor)
    assert cheap.gain_per_kb > dear.gain_per_kb
    assert cheap.gain / cheap.cost_bytes < dear.gain / dear.cost_bytes  # per total byte


@pytest.mark.slow
def test_program_check_steps_down_until_the_program_fits(
    data: ImageDataset, model: torch.nn.Module
) -> None:
    pytest.importorskip("executorch")
    task = make_shift_task(data, "invert", shots=4, max_test=10)
    space = TinySpace()

    def factory() -> torch.nn.Module:
        return space.build(SMALL_ARCH)

    def memory(plan: UpdatePlan) -> TrainingMemory:
        return training_memory(factory, (3, 32, 32), plan, num_classes=10)

    chosen = ["head.classifier", "blocks.2.project.0", "blocks.0.expand.0"]
    two = memory(make_plan(model, "sparse", layers=chosen[:2])).total_bytes
    # the model's choice of three layers is over a budget just above two: one must leave
    plan, mem, tries = step_down_in_program(model, chosen, memory, two, (3, 32, 32), 8)
    assert plan.budget_check == "program" and plan.layers == tuple(chosen[:2])
    net = copy.deepcopy(model)
    plan.apply(net)
    program = export_training_program(net, (task.shots_x[:8], task.shots_y[:8]))
    assert program.plan_bytes + mem.optimizer_bytes == tries[-1][1] <= two < tries[0][1]
    with pytest.raises(BudgetTooSmallError, match="smallest plan needs"):
        step_down_in_program(model, chosen, memory, 1000, (3, 32, 32), 8)
    # through the planner: whatever it picks is checked in the program
    picked, _, _ = plan_under_budget(
        model, factory, (3, 32, 32), 2 * two, task.shots_x, task.shots_y, num_classes=10,
        probe_steps=2, check_program=True,
    )  # fmt: skip
    assert picked.budget_check == "program"


@pytest.mark.slow
def test_runtime_adaptation_matches_pytorch(data: ImageDataset, model: torch.nn.Module) -> None:
    task = make_shift_task(data, "invert", shots=2, max_test=100)
    plan = make_plan(model, "last", blocks_k=2)
    result = finetune(
        model, plan, task.shots_x, task.shots_y, steps=20, engine="executorch", check=True
    )
    for got, want in zip(result.losses, result.reference_losses, strict=True):
        assert abs(got - want) <= 1e-4 * abs(want)
    eager = finetune(model, plan, task.shots_x, task.shots_y, steps=20)
    with torch.no_grad():
        assert torch.allclose(result.model(task.test_x), eager.model(task.test_x), atol=1e-4)


def test_training_mode_batch_norm_uses_batch_statistics_then_the_shots(
    data: ImageDataset, model: torch.nn.Module
) -> None:
    """`batch_norm="train"`: the steps normalize with each batch's statistics (the losses differ
    from frozen batch norm's from the first step), and the adapted model's running statistics
    are the shots' own (re-estimated after the last step), not the deployed model's."""
    task = make_shift_task(data, "invert", shots=4, max_test=10)
    plan = make_plan(model, "bn_bias")
    frozen = finetune(model, plan, task.shots_x, task.shots_y, steps=3, lr=0.05)
    train = finetune(model, plan, task.shots_x, task.shots_y, steps=3, lr=0.05, batch_norm="train")
    assert abs(train.losses[0] - frozen.losses[0]) > 1e-4
    assert not train.model.training
    stats, stats0 = dict(train.model.named_buffers()), dict(model.named_buffers())
    expected = adabn(model, task.shots_x)  # the shots' statistics, before any step
    # the stem's statistics read only the shots through frozen weights: AdaBN's exactly
    assert torch.allclose(
        stats["stem.1.running_mean"], dict(expected.named_buffers())["stem.1.running_mean"]
    )
    assert not torch.equal(stats["stem.1.running_mean"], stats0["stem.1.running_mean"])
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        finetune(model, plan, task.shots_x, task.shots_y, steps=1, batch_norm="frozen")


@pytest.mark.slow
def test_training_mode_batch_norm_in_the_runtime_matches_pytorch(
    data: ImageDataset, model: torch.nn.Module
) -> None:
    pytest.importorskip("executorch")
    task = make_shift_task(data, "invert", shots=2, max_test=100)
    plan = make_plan(model, "bn_bias")
    kw: dict[str, Any] = dict(steps=10, batch_norm="train")
    result = finetune(
        model, plan, task.shots_x, task.shots_y, engine="executorch", check=True, **kw
    )
    for got, want in zip(result.losses, result.reference_losses, strict=True):
        assert abs(got - want) <= 1e-4 * abs(want)
    eager = finetune(model, plan, task.shots_x, task.shots_y, **kw)
    with torch.no_grad():
        assert torch.allclose(result.model(task.test_x), eager.model(task.test_x), atol=1e-4)

"""Knowledge distillation: the loss, and that a training run learns."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas.compress import (
    FinetuneConfig,
    KDConfig,
    distill_model,
    evaluate_accuracy,
    kd_loss,
    largest_arch,
    predict_logits,
)
from nas.data import ImageDataset
from search_spaces.tiny import TinySpace


def test_kd_loss_mixes_soft_and_hard_terms() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = F.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, KDConfig(alpha=0.0)), ce)
    assert torch.allclose(kd_loss(s, None, y, KDConfig(alpha=0.9)), ce)
    # A student that matches its teacher pays only the hard term.
    assert torch.allclose(kd_loss(s, s, y, KDConfig(alpha=0.5)), 0.5 * ce, atol=1e-6)
    soft = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    assert torch.allclose(kd_loss(s, t, y, KDConfig(alpha=1.0, temperature=3.0)), soft, atol=1e-5)


def test_configs_reject_invalid_values() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        KDConfig(alpha=1.5)
    with pytest.raises(ValueError, match="batch_size must be"):
        FinetuneConfig(batch_size=0)


def test_distillation_learns_and_is_seeded(
    space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    torch.manual_seed(0)
    teacher = space.build(arch)
    cfg = FinetuneConfig(epochs=4, lr=0.1, batch_size=64)
    distill_model(teacher, None, data.train, cfg)
    teacher_acc = evaluate_accuracy(teacher, data.test)
    assert teacher_acc > 0.5
    torch.manual_seed(1)
    student = space.build(arch)
    twin = copy.deepcopy(student)
    history = distill_model(
        student,
        teacher,
        data.train,
        FinetuneConfig(epochs=0.5, batch_size=64, max_steps=2),
        KDConfig(alpha=0.7, temperature=4.0),
        seed=3,
    )
    assert history.used_teacher and history.steps == 2
    distill_model(
        twin,
        teacher,
        data.train,
        FinetuneConfig(epochs=0.5, batch_size=64, max_steps=2),
        KDConfig(alpha=0.7, temperature=4.0),
        seed=3,
    )
    for a, b in zip(student.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same seed, same result
    assert all(not p.requires_grad for p in teacher.parameters())
    # The teacher's logits handed in (computed once for several runs) train the same student.
    cached = copy.deepcopy(twin)
    kd, short = KDConfig(alpha=0.7, temperature=4.0), FinetuneConfig(batch_size=64, max_steps=2)
    distill_model(twin, teacher, data.train, short, kd, seed=5)
    logits = predict_logits(teacher, data.train.tensors[0])
    distill_model(cached, teacher, data.train, short, kd, seed=5, teacher_logits=logits)
    for a, b in zip(twin.state_dict().values(), cached.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="teacher_logits has 3 rows"):
        distill_model(cached, teacher, data.train, short, kd, teacher_logits=logits[:3])


def test_largest_arch_is_the_biggest(space: TinySpace) -> None:
    big = largest_arch(space)
    assert big["s2.width"] == 48 and big["s0.depth"] == 2 and big["s1.b1.e"] == 4
    rng = np.random.default_rng(0)
    assert all(space.cost(space.sample(rng)).macs <= space.cost(big).macs for _ in range(200))

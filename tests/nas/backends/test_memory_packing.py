"""The training programs' memory plan: offsets that never overlap in space and time, at or near
the live peak, the same for the same lifetimes; ExecuTorch plans with it."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nas.backends import export_training_program, pack_offsets


def _peak(spans: list[tuple[int, int, int]]) -> int:
    end = max(e for _, e, _ in spans)
    return max(sum(-(-n // 16) * 16 for s, e, n in spans if s <= t <= e) for t in range(end + 1))


def test_offsets_never_overlap_and_stay_near_the_live_peak() -> None:
    rng = random.Random(0)
    for _ in range(20):
        spans = []
        for _ in range(40):
            start = rng.randrange(50)
            spans.append((start, start + rng.randrange(20), rng.choice([16, 64, 100, 1000, 4096])))
        offsets, total = pack_offsets(spans)
        for i, (s1, e1, n1) in enumerate(spans):
            assert offsets[i] % 16 == 0 and offsets[i] + n1 <= total
            for j in range(i):
                s2, e2, n2 = spans[j]
                if not (e1 < s2 or s1 > e2):  # alive together: apart in memory
                    a, b = sorted([(offsets[i], n1), (offsets[j], n2)])
                    assert a[0] + -(-a[1] // 16) * 16 <= b[0]
        assert _peak(spans) <= total <= 1.25 * _peak(spans)
        assert pack_offsets(list(spans)) == (offsets, total)  # deterministic


def test_a_chain_packs_at_its_peak() -> None:
    # a chain of layers: each output lives while the next is made (two alive at once)
    spans = [(t, t + 1, 1024) for t in range(10)] + [(0, 10, 100)]
    assert pack_offsets(spans)[1] == _peak(spans)


def test_the_training_program_plans_with_it() -> None:
    pytest.importorskip("executorch")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net[0].requires_grad_(False)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    program = export_training_program(net.eval(), (x, y))
    # trainable weights and their gradients are in the plan, beside the live activations
    assert program.plan_bytes >= 2 * 4 * (3 * 144 + 3) + program.live_peak_bytes // 2
    assert program.live_peak_bytes <= program.plan_bytes

"""Structured pruning: channels really removed, outputs unchanged in shape, targets met."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nas.compress import FinetuneConfig, PruneConfig, macs_params, prune_channels, prune_model
from nas.core.layers import trace_layer_specs
from nas.data import ImageDataset
from search_spaces.tiny import TinySpace

pytest.importorskip("torch_pruning")

SHAPE = (3, 32, 32)


def _channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_pruned_model_has_fewer_channels_and_same_output_shape(
    space: TinySpace, arch: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    model = space.build(arch).eval()
    before = _channels(model)
    base_macs, base_params = macs_params(model, SHAPE)
    x = torch.randn(2, *SHAPE)
    model, records, met = prune_channels(
        model,
        SHAPE,
        cost_fn=lambda m: float(macs_params(m, SHAPE)[0]),
        target_cost=0.6 * base_macs,
        rounds=2,
        step_fraction=0.25,
    )
    after = _channels(model)
    macs, params = macs_params(model, SHAPE)
    assert met and macs <= 0.6 * base_macs and params < base_params
    assert sum(after.values()) < sum(before.values())
    assert any(after[k] < before[k] for k in before)
    assert model(x).shape == (2, 10)
    # Real removal: the weight tensors shrank, and depthwise convs kept groups == channels.
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels == m.weight.shape[0]
    # The residual stream of stage 0 stays coupled: both blocks agree on its width.
    assert after["blocks.0.project.0"] == after["blocks.1.project.0"]
    assert [r["round"] for r in records] == [1, 2]


def test_latency_budget_prunes_where_the_latency_model_says(
    space: TinySpace, arch: dict[str, Any]
) -> None:
    """A fake latency model that charges only stage-2 convs: pruning must spend its budget
    there and leave stage 0 alone, where MAC-driven pruning would have cut."""
    torch.manual_seed(0)
    model = space.build(arch).eval()

    def latency_ms(m: nn.Module) -> float:
        specs = trace_layer_specs(m, SHAPE)
        return sum(s.macs for s in specs if s.input_shape[-1] <= 8 and s.op == "conv") / 1e5

    base = latency_ms(model)
    stage0 = {k: v for k, v in _channels(model).items() if k.startswith(("blocks.0", "blocks.1"))}
    model, _, met = prune_channels(
        model, SHAPE, cost_fn=latency_ms, target_cost=0.7 * base, rounds=1, step_fraction=0.25
    )
    assert met and latency_ms(model) <= 0.7 * base
    assert {k: v for k, v in _channels(model).items() if k in stage0} == stage0


def test_prune_model_fine_tunes_and_reports(
    space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    torch.manual_seed(0)
    model = space.build(arch)
    cfg = PruneConfig(
        macs_reduction=0.3,
        rounds=1,
        step_fraction=0.25,
        finetune=FinetuneConfig(epochs=0.25, batch_size=64),
        final_finetune=FinetuneConfig(epochs=0.25, batch_size=64),
    )
    result = prune_model(model, data.train, cfg, input_shape=SHAPE, val=data.val, seed=0)
    assert result.target_met and result.macs_ratio <= 0.7
    assert result.rounds[0]["val_accuracy"] >= 0.0
    assert result.to_dict()["objective"] == "macs"


def test_prune_config_and_budget_errors(
    space: TinySpace, arch: dict[str, Any], data: ImageDataset
) -> None:
    with pytest.raises(ValueError, match="exactly one of macs_reduction and latency_budget_ms"):
        PruneConfig(macs_reduction=0.3, latency_budget_ms=1.0)
    with pytest.raises(ValueError, match="needs latency_fn"):
        prune_model(
            space.build(arch),
            data.train,
            PruneConfig(macs_reduction=None, latency_budget_ms=0.1),
            input_shape=SHAPE,
        )

"""Checkpoints: round trip of a pruned model, and clear failures for corrupt or foreign ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.compress import CheckpointError, load_model, macs_params, prune_channels, save_model
from search_spaces.tiny import TinySpace

pytest.importorskip("torch_pruning")


def _pruned(space: TinySpace, arch: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = space.build(arch).eval()
    base = macs_params(model, (3, 32, 32))[0]
    prune_channels(
        model,
        (3, 32, 32),
        cost_fn=lambda m: float(macs_params(m, (3, 32, 32))[0]),
        target_cost=0.8 * base,
        rounds=1,
        step_fraction=0.25,
    )
    return model


def test_pruned_model_round_trips(tmp_path: Path, space: TinySpace, arch: dict[str, Any]) -> None:
    model = _pruned(space, arch)
    path = save_model(tmp_path / "m.safetensors", model, info={"note": "x"})
    loaded, ckpt = load_model(path, lambda: space.build(arch))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert ckpt.info["note"] == "x"
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == ckpt.sha256


def test_corrupt_checkpoint_fails_clearly(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path, lambda: space.build(arch))
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path, lambda: space.build(arch))


def test_missing_or_invalid_description_fails_clearly(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path, lambda: space.build(arch))
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=r"description .* is missing"):
        load_model(path, lambda: space.build(arch))


def test_checkpoint_of_another_arch_fails_clearly(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    other = dict(arch, **{"s0.depth": 1, "s2.b0.k": 5})
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(path, lambda: space.build(other))
    wider = dict(arch, **{"s2.width": 48})
    loaded, _ = load_model(path, lambda: space.build(wider))  # channel counts come from the file
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in space.build(arch).parameters()
    )


def test_kind_mismatch_fails_clearly(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch), kind="fp32")
    with pytest.raises(CheckpointError, match="expected a 'qat' one"):
        load_model(path, lambda: space.build(arch), kind="qat")

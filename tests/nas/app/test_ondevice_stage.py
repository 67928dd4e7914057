"""The run's `ondevice` stage: each winner's deployed model (a pruned chain model here) adapted
beside it under each mode, resumed row by row, its report section; the fall-back to PyTorch
where the runtime really lacks a part (Adam), only when asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import nas.app.ondevice_stage as stage
from nas.app.config import ConfigError, config_from_dict
from nas.app.demo import demo_config
from nas.app.errors import InputError
from nas.app.ondevice_adapt import adapt_model, choose_plan
from nas.app.pipeline import RunState
from nas.compress import chain_dir, prune_channels, save_model
from nas.data import load_embedded_digits
from search_spaces import get_space


@pytest.fixture(scope="module")
def data() -> Any:
    return load_embedded_digits(copies_train=1, copies_val=2, copies_test=1)


def _state(tmp_path: Path, data: Any, steps: list[str], **ondevice: Any) -> RunState:
    torch.manual_seed(0)
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}
    config = demo_config(
        compress={"top_k": 1, "steps": steps},
        ondevice={"enabled": True, "shots": 2, "steps": 3, **ondevice},
    )
    winners = pd.DataFrame({"arch_key": [space.key(arch)]})
    return RunState(config, tmp_path, space, data, supernet=space.supernet(), winners=winners)


def _pruned_chain(state: RunState) -> Path:
    """A finished `prune` step in the winner's chain folder: a model with channels removed."""
    arch = state.space.from_key(str(state.winners["arch_key"][0]))
    model = state.supernet.export(arch).eval()
    params = sum(p.numel() for p in model.parameters())
    pruned, _, _ = prune_channels(
        model,
        state.space.input_shape(arch),
        cost_fn=lambda m: float(sum(p.numel() for p in m.parameters())),
        target_cost=0.7 * params,
        rounds=1,
    )
    step = chain_dir(state.run_dir, state.space, arch) / "02-prune"
    step.mkdir(parents=True)
    path = save_model(step / "model.safetensors", pruned)
    (step / "done.json").write_text("{}")
    return path


def test_the_stage_adapts_each_winner_beside_its_deployed_model(
    tmp_path: Path, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    state = _state(tmp_path, data, ["prune", "qat"], modes=["bias", "full"])
    deployed = _pruned_chain(state)
    digest = hashlib.sha256(deployed.read_bytes()).hexdigest()
    stage.stage_ondevice(state, False)
    rows = json.loads((tmp_path / stage.RESULTS).read_text())["rows"]
    assert [r["mode"] for r in rows] == ["bias", "full"]
    for r in rows:
        assert r["source"].endswith("02-prune") and r["engine"] == r["engine_asked"] == "pytorch"
        assert (tmp_path / r["folder"] / "adapted.safetensors").is_file()
        assert r["folder"].startswith(stage.STAGE_DIR)
    assert hashlib.sha256(deployed.read_bytes()).hexdigest() == digest  # never overwritten
    # priced on the pruned structure, not the plain arch's
    space, arch = state.space, state.space.from_key(rows[0]["arch"])
    plain = choose_plan(space, arch, "full").memory.total_bytes
    assert rows[1]["planned_bytes"] < plain

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished row is resumed, not adapted again")

    monkeypatch.setattr(stage, "adapt_model", fail)
    stage.stage_ondevice(state, False)
    lines = stage.ondevice_section(state)
    text = "\n".join(lines)
    assert "## On-device learning" in text and "| no adaptation | AdaBN | after |" in text
    assert text.count("02-prune") == 2 and (tmp_path / stage._PLOT).stat().st_size > 0
    state.config.ondevice.enabled = False
    assert stage.ondevice_section(state) == []


def test_the_runtime_lacks_adam_and_falls_back_only_when_asked(tmp_path: Path, data: Any) -> None:
    """A real gap, not a mock: ExecuTorch's training extension has an SGD optimizer only."""
    import executorch.extension.training as training

    assert not [n for n in dir(training) if "adam" in n.lower()]
    asked = {"runtime": "executorch", "optimizer": "adam", "lr": 0.001}
    with pytest.raises(ConfigError, match=r"ondevice.optimizer: the runtime has no 'adam'"):
        config_from_dict({"ondevice": {"enabled": True, **asked}})
    state = _state(tmp_path, data, [], modes=["bias"], fallback="pytorch", **asked)
    arch = state.space.from_key(str(state.winners["arch_key"][0]))
    model = state.supernet.export(arch).eval()
    with pytest.raises(InputError, match=r"no 'adam' optimizer.*--fallback pytorch"):
        adapt_model(model, state.space, arch, data, tmp_path / "x", mode="bias",
                    shots=2, steps=2, engine="executorch", optimizer="adam")  # fmt: skip
    assert not (tmp_path / "x").exists()
    stage.stage_ondevice(state, False)
    (row,) = json.loads((tmp_path / stage.RESULTS).read_text())["rows"]
    assert row["source"] == "inherited weights" and row["optimizer"] == "adam"
    assert (row["engine"], row["engine_asked"]) == ("pytorch", "executorch")
    assert "no 'adam' optimizer" in row["fallback_reason"]
    assert "PyTorch ran: the runtime has no 'adam'" in "\n".join(stage.ondevice_section(state))


def test_a_mode_over_the_budget_is_skipped_and_said(tmp_path: Path, data: Any) -> None:
    state = _state(tmp_path, data, [], modes=["full", "last"], budget_kb=1000)
    stage.stage_ondevice(state, False)
    full, last = json.loads((tmp_path / stage.RESULTS).read_text())["rows"]
    assert "plan 'full' needs" in full["skipped"] and "folder" not in full
    assert last["planned_bytes"] * 1.1 <= 1000 * 1024
    assert "skipped: plan 'full' needs" in "\n".join(stage.ondevice_section(state))


@pytest.mark.slow
def test_the_stage_trains_in_the_runtime(tmp_path: Path, data: Any) -> None:
    state = _state(tmp_path, data, [], modes=["bias"], runtime="executorch")
    stage.stage_ondevice(state, False)
    (row,) = json.loads((tmp_path / stage.RESULTS).read_text())["rows"]
    assert row["engine"] == "executorch" and row["fallback_reason"] is None
    assert abs(row["program_bytes"] / row["planned_bytes"] - 1) < 0.15
    assert "| executorch |" in "\n".join(stage.ondevice_section(state))


def test_a_missing_runtime_is_said_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """ExecuTorch is installed here, so its absence is a monkeypatched `find_spec` (the only
    stand-in in this file): the config check names the extra, and the fall-back silences it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name)
    )
    with pytest.raises(ConfigError, match=r"ondevice.runtime: ExecuTorch is not installed"):
        config_from_dict({"ondevice": {"runtime": "executorch"}})
    config_from_dict({"ondevice": {"runtime": "executorch", "fallback": "pytorch"}})


def test_training_mode_batch_norm_is_a_key_that_keeps_older_folders(
    tmp_path: Path, data: Any
) -> None:
    """`ondevice.batch_norm: train` reaches the adaptation (the row says so); at its default
    the stage's fingerprint is the one a config from before the key had."""
    from nas.app.stages import STAGES, fingerprint

    state = _state(tmp_path, data, [], modes=["bn_bias"], batch_norm="train")
    stage.stage_ondevice(state, False)
    (row,) = json.loads((tmp_path / stage.RESULTS).read_text())["rows"]
    assert row["batch_norm"] == "train" and row["mode"] == "bn_bias"
    config = state.config.to_dict()
    trained = fingerprint(STAGES["ondevice"], config)
    config["ondevice"]["batch_norm"] = "eval"
    frozen = fingerprint(STAGES["ondevice"], config)
    del config["ondevice"]["batch_norm"]  # a stored config from before the key
    assert fingerprint(STAGES["ondevice"], config) == frozen != trained
